"""The resolution figure (benchmark section "Resolution"): stars and their FWHM, against the printed figures."""

import numpy as np
import pytest

from astrosr.fits_io import read_image
from astrosr.psf import gaussian_psf
from astrosr.stars import background, resolution_stars, star_fwhm

# BENCHMARK.md section 9, ORI column (median FWHM in px; 40 stars unless noted)
ORI_FWHM = {"reprojected_sdss_i.fits": (1.18, 40), "gc_2mass_j.fits": (1.08, 40), "gc_2mass_h.fits": (1.13, 40),
            "gc_2mass_k.fits": (1.32, 40), "M51.fits": (2.62, 6)}


@pytest.mark.parametrize("name", list(ORI_FWHM))
def test_ori_star_fwhm_reproduces_the_printed_figures(data_dir, name):
    image = read_image(data_dir / name).data
    stars = resolution_stars(image)
    fwhm, count = ORI_FWHM[name]
    assert len(stars) == count
    assert round(star_fwhm(image, stars), 2) == fwhm


def test_a_gaussian_star_measures_its_own_fwhm_and_stars_keep_their_rules(rng):
    image = rng.normal(0.0, 1.0, (200, 200))
    truth = []
    for k, (y, x) in enumerate([(40, 40), (40, 100), (40, 160), (100, 40), (100, 160), (160, 40), (160, 100),
                                (160, 160)]):
        image[y - 10 : y + 11, x - 10 : x + 11] += (500.0 + 100 * k) * 2 * np.pi * (2.5 / 2.3548) ** 2 * gaussian_psf(
            2.5, size=21)
        truth.append((x, y))
    image[100 - 10 : 100 + 11, 100 - 10 : 100 + 11] += 300 * gaussian_psf(2.5, size=21)  # two sources 8 px apart:
    image[108 - 10 : 108 + 11, 100 - 10 : 100 + 11] += 300 * gaussian_psf(2.5, size=21)  # neither is isolated
    stars = resolution_stars(image)
    # eight isolated stars; the brightest fifth (one) dropped; the pair dropped
    assert len(stars) == 7 and not np.any(np.hypot(stars[:, 0] - 100, stars[:, 1] - 104) < 10)
    assert tuple(np.round(stars[0]).astype(int)) == truth[-2]  # brightest kept first
    assert star_fwhm(image, stars) == pytest.approx(2.5, rel=0.02)
    assert star_fwhm(image, np.empty((0, 2))) is None
    assert len(resolution_stars(rng.normal(0.0, 1.0, (100, 100)))) == 0  # noise only: no figure


def test_background_ignores_nan(rng):
    image = rng.normal(5.0, 2.0, (100, 100))
    image[:10] = np.nan
    median, std = background(image)
    assert median == pytest.approx(5.0, abs=0.1) and std == pytest.approx(2.0, rel=0.05)


def test_flux_ratio_and_deepest_ring_against_hand_made_images(rng):
    from astrosr.stars import deepest_ring, flux_ratio

    image = rng.normal(0.0, 1.0, (120, 120))
    stars = np.array([[40.0, 40.0], [80.0, 80.0]])
    for x, y in stars.astype(int):
        image[y - 10 : y + 11, x - 10 : x + 11] += 1000 * gaussian_psf(3.0, size=21)
    brighter = image * 1.05
    assert flux_ratio(image, brighter, stars, 8.0) == pytest.approx(1.05, rel=1e-3)
    ringed = image.copy()
    yy, xx = np.mgrid[:120, :120]
    for x, y in stars:  # a ring of -5 (5 sigma of the input's noise) between radii 6 and 8
        ringed[(np.hypot(xx - x, yy - y) >= 6) & (np.hypot(xx - x, yy - y) < 8)] -= 5.0
    assert deepest_ring(ringed, stars, 3.0, 1.0) == pytest.approx(-5.0, abs=0.5)
    assert abs(deepest_ring(image, stars, 3.0, 1.0)) < 0.6  # no ring: about the noise of an annulus mean
