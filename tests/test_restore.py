"""The restoration path: the data-consistency step and whole-image restoration."""

import numpy as np
import pytest
import torch
from photutils.aperture import CircularAperture, aperture_photometry
from scipy import ndimage

from astrosr.psf import moffat_psf
from astrosr.restore import consistency_step, restore_image


class Identity(torch.nn.Module):
    """Stands in for an untrained residual model: restore(x) == x."""

    scale = 1

    def restore(self, blu, *, psf=None, cond=None):
        return blu.clone()

    def sample(self, blu, n, *, psf=None, cond=None):
        return blu.expand(n, *blu.shape).clone()


def _star_field(rng, n=40, shape=(256, 256)):
    """Gaussian stars on a flat sky, built independently of astrosr."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 10.0)
    positions = rng.uniform(20, shape[0] - 20, size=(n, 2))
    for (y, x), flux in zip(positions, rng.uniform(500, 5000, n)):
        image += flux / (2 * np.pi * 1.5**2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    return image, positions


def test_consistency_step_restores_flux_of_a_flux_losing_restoration():
    rng = np.random.default_rng(3)
    truth, positions = _star_field(rng)
    kernel = moffat_psf(4.0, beta=3.0)
    blu = ndimage.convolve(truth, kernel, mode="nearest")
    lossy = 10.0 + 0.8 * (truth - 10.0)  # every star loses 20% of its flux
    fixed = consistency_step(lossy, blu, kernel)

    def data_residual(x):
        return np.abs(ndimage.convolve(x, kernel, mode="nearest") - blu).mean()

    assert data_residual(fixed) < 0.5 * data_residual(lossy)
    apertures = CircularAperture(positions[:, ::-1], r=6)

    def flux_error(x):
        f = aperture_photometry(x - 10.0, apertures)["aperture_sum"]
        f_true = aperture_photometry(truth - 10.0, apertures)["aperture_sum"]
        return np.median(np.abs(np.asarray(f) / np.asarray(f_true) - 1))

    assert flux_error(lossy) == pytest.approx(0.2, abs=0.01)
    assert flux_error(fixed) < 0.05


def test_consistency_step_equals_two_explicit_landweber_iterations():
    rng = np.random.default_rng(4)
    truth, _ = _star_field(rng)
    kernel = moffat_psf(3.0)
    blu = ndimage.convolve(truth, kernel, mode="nearest") + rng.normal(0, 1, truth.shape)
    x0 = ndimage.gaussian_filter(truth, 1.0)
    x = x0.copy()
    for _ in range(2):  # x += K^T (y - K x), unit step
        x = x + ndimage.correlate(blu - ndimage.convolve(x, kernel, mode="nearest"), kernel, mode="reflect")
    closed = consistency_step(x0, blu, kernel, k=2)
    inner = (slice(60, -60), slice(60, -60))  # edge handling differs by design
    assert np.allclose(closed[inner], x[inner], rtol=0, atol=1e-6 * np.abs(x).max())


def test_consistency_step_ignores_infinite_pixels_like_nan():
    rng = np.random.default_rng(5)
    blu = rng.normal(10.0, 1.0, (90, 110))
    x0 = ndimage.gaussian_filter(blu, 1.0)
    with_nan, with_inf = blu.copy(), blu.copy()
    with_nan[40:45, 50:60] = np.nan
    with_inf[40:45, 50:60] = np.inf
    out = consistency_step(x0, with_inf, moffat_psf(3.0))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, consistency_step(x0, with_nan, moffat_psf(3.0)))


def test_consistency_step_with_block_averaging_reduces_the_data_residual():
    rng = np.random.default_rng(5)
    truth, _ = _star_field(rng)
    kernel = moffat_psf(4.0)
    blu = ndimage.convolve(truth, kernel, mode="nearest").reshape(128, 2, 128, 2).mean(axis=(1, 3))
    lossy = 0.8 * truth

    def residual(x):
        return np.abs(ndimage.convolve(x, kernel, mode="nearest").reshape(128, 2, 128, 2).mean(axis=(1, 3)) - blu).mean()

    assert residual(consistency_step(lossy, blu, kernel, scale=2)) < 0.2 * residual(lossy)


def test_identity_model_returns_the_input_and_keeps_nan():
    rng = np.random.default_rng(6)
    image = rng.normal(100, 5, (300, 410))
    image[50:60, 70:75] = np.nan
    out = restore_image(image, Identity(), psf_kernel=moffat_psf(), consistency=False, tile=128, overlap=32)
    good = np.isfinite(image)
    assert np.array_equal(np.isnan(out.sr), ~good)
    assert np.abs(out.sr[good] - image[good]).max() < 1e-5 * np.abs(image[good]).max()
    assert out.uncert is None


def test_image_smaller_than_a_tile_is_padded_and_cropped_back():
    rng = np.random.default_rng(7)
    image = rng.normal(0, 1, (40, 90))
    out = restore_image(image, Identity(), psf_kernel=moffat_psf(), consistency=False, tile=128)
    assert out.sr.shape == image.shape
    assert np.allclose(out.sr, image, atol=1e-5)


def test_identity_samples_have_zero_uncertainty():
    image = np.random.default_rng(8).normal(0, 1, (128, 128))
    out = restore_image(image, Identity(), psf_kernel=moffat_psf(), consistency=False, tile=128, samples=3)
    assert out.uncert.shape == image.shape
    assert np.abs(out.uncert).max() < 1e-6


class Recorder(Identity):
    """Identity that keeps every tile and conditioning row it is given (model units)."""

    def __init__(self):
        super().__init__()
        self.tiles, self.cond = [], []

    def restore(self, blu, *, psf=None, cond=None):
        self.tiles.append(blu.clone())
        self.cond.append(cond.clone())
        return blu.clone()


def test_model_input_is_scaled_by_blus_own_percentiles_and_conditioned_on_its_noise():
    """CONTRACTS.md 2: the model sees (blu - p0.5) / (p99.9 - p0.5) of BLU alone, NaN filled with
    BLU's clipped median, and cond = [fwhm, clipped std / (p99.9 - p0.5)]; checked with numpy/astropy."""
    from astropy.stats import sigma_clipped_stats

    rng = np.random.default_rng(9)
    image = rng.normal(50.0, 3.0, (128, 128))
    image[10:20, 30:40] = np.nan
    image[100, 100] = 5000.0
    model = Recorder()
    restore_image(image, model, psf_kernel=moffat_psf(), psf_fwhm=3.5, consistency=False, tile=128, overlap=0)
    good = np.isfinite(image)
    lo, hi = np.percentile(image[good], [0.5, 99.9])
    _, median, std = sigma_clipped_stats(image[good], sigma=3, maxiters=5)
    expected = (np.where(good, image, median) - lo) / (hi - lo)
    seen = torch.cat(model.tiles)[:, 0].numpy()
    assert seen.shape == (1, 128, 128)
    np.testing.assert_allclose(seen[0], expected, rtol=1e-6, atol=1e-6)  # float32 input
    np.testing.assert_allclose(torch.cat(model.cond).numpy(), [[3.5, std / (hi - lo)]], rtol=1e-5)


def test_image_without_dynamic_range_is_an_error_not_a_nan_image():
    from astrosr.errors import InputError

    image = np.zeros((128, 128))
    image[0, 0] = 1.0  # not constant, but its 0.5 and 99.9 percentiles are equal
    with pytest.raises(InputError, match=r"0\.5 and 99\.9 percentiles are equal \(0\)"):
        restore_image(image, Identity(), psf_kernel=moffat_psf(), consistency=False, tile=128)
