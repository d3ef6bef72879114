"""Simulated fields: reproducible, realistic statistics, a TAN WCS, every parameter recorded."""

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from astrosr.errors import ConfigError, InputError
from astrosr.fits_io import read_image
from astrosr.simulate import sim_name, simulate_fields, simulate_image, write_simulated


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_fields(out, n=2, seed=3, size=256, progress=False)


def _params(header):
    history = "".join(str(c) for c in header["HISTORY"])
    return json.loads(history[history.index("params ") + len("params "):])


def test_names_and_files(sims):
    assert [p.name for p in sims] == ["sim_s3_000.fits", "sim_s3_001.fits"]
    assert sim_name(1000, 12) == "sim_s1000_012.fits"
    assert sorted(p.name for p in sims[0].parent.iterdir()) == [p.name for p in sims]  # no temporaries left


def test_reproducible_and_seed_dependent(sims, tmp_path):
    again = write_simulated(tmp_path / "again.fits", seed=3, index=1, size=256)
    np.testing.assert_array_equal(fits.getdata(tmp_path / "again.fits"), fits.getdata(sims[1]))
    assert again["sky"] == fits.getheader(sims[1])["SKY"]
    write_simulated(tmp_path / "other.fits", seed=4, index=1, size=256)
    assert not np.array_equal(fits.getdata(tmp_path / "other.fits"), fits.getdata(sims[1]))
    assert not np.array_equal(fits.getdata(sims[0]), fits.getdata(sims[1]))


def test_header_records_parameters_and_tan_wcs(sims):
    header = fits.getheader(sims[0])
    params = _params(header)
    assert header["SIMSEED"] == 3 and header["SIMINDEX"] == 0
    assert params["sky"] == header["SKY"] and params["noise_std"] == header["NOISESTD"]
    assert 30 <= params["n_stars"] <= 200 and len(params["galaxies"]) == header["NGALAXY"] >= 3
    main = params["galaxies"][0]
    assert 0.7 <= main["n"] <= 4 and 8 <= main["r_eff"] <= 60 and 0 <= main["ellip"] <= 0.6
    wcs = WCS(header)
    assert wcs.wcs.ctype[0] == "RA---TAN" and wcs.wcs.ctype[1] == "DEC--TAN"
    np.testing.assert_allclose(proj_plane_pixel_scales(wcs) * 3600, [0.4, 0.4], rtol=1e-9)


def test_sky_and_noise_statistics(sims):
    for path in sims:
        data = fits.getdata(path).astype(np.float64)
        header = fits.getheader(path)
        _, median, _ = sigma_clipped_stats(data, sigma=3, maxiters=5)
        # sources lift the clipped median a little above the flat sky
        assert header["SKY"] <= median < header["SKY"] + 0.5 * header["NOISESTD"]
        # neighbour differences cancel the smooth light: their clipped std is sqrt(2) x the pixel noise
        std = sigma_clipped_stats(np.diff(data, axis=1), sigma=3, maxiters=5)[2] / np.sqrt(2)
        assert std == pytest.approx(header["NOISESTD"], rel=0.03)
        assert data.max() > header["SKY"] + 50 * header["NOISESTD"]  # bright stars / galaxy core


def test_galaxy_light_where_the_parameters_say(sims):
    data = fits.getdata(sims[0]).astype(np.float64)
    header = fits.getheader(sims[0])
    g = _params(header)["galaxies"][0]
    y, x = int(round(g["y_0"] - 0.5)), int(round(g["x_0"] - 0.5))
    core = np.median(data[y - 1 : y + 2, x - 1 : x + 2]) - header["SKY"]
    assert core > 3 * g["amplitude"] * 0.5  # a Sersic core exceeds its r_eff level


def test_star_fluxes_follow_a_power_law():
    rng = np.random.default_rng(0)
    _, params = simulate_image(rng, size=128)
    assert params["star_flux_max"] > 10 * params["star_flux_min"] or params["n_stars"] < 60


def test_read_by_astrosr(sims):
    image = read_image(sims[0])
    assert image.data.shape == (256, 256) and np.isfinite(image.data).all()


def test_existing_output_is_an_error_unless_overwrite(sims):
    with pytest.raises(InputError, match=r"sim_s3_000\.fits: output exists \(overwrite=True replaces it"):
        simulate_fields(sims[0].parent, n=1, seed=3, size=256, progress=False)
    before = fits.getdata(sims[0]).copy()
    simulate_fields(sims[0].parent, n=1, seed=3, size=256, overwrite=True, progress=False)
    np.testing.assert_array_equal(fits.getdata(sims[0]), before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), r"n: must be >= 1, got 0"),
        (dict(seed=-1), r"seed: must be >= 0, got -1"),
        (dict(size=100), r"size: must be >= 128, got 100"),
        (dict(stars="many"), r"simulate stars: expected a number or a range 'lo:hi', got 'many'"),
        (dict(stars="0.5:10"), r"simulate stars: expected counts >= 1, got '0.5:10'"),
        (dict(faintest=0.0), r"faintest: must be >= 0.01, got 0.0"),
        (dict(faintest=5.0, brightest=2.0), r"simulate brightest: 2.0 is below faintest 5.0"),
        (dict(galaxy_peak="bright"), r"simulate galaxy_peak: expected a number or a range 'lo:hi', got 'bright'"),
    ],
)
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        simulate_fields(tmp_path, progress=False, **kwargs)


def test_a_stated_seeing_psf_changes_only_the_psf(tmp_path):
    from astrosr.simulate import simulate_image

    drawn, params = simulate_image(np.random.default_rng([2000, 0]), size=128)
    stated, stated_params = simulate_image(np.random.default_rng([2000, 0]), size=128, psf_fwhm=4.0, psf_beta=2.5)
    assert stated_params["psf"] == {"shape": "moffat", "fwhm": 4.0, "beta": 2.5}
    assert stated_params["sky"] == params["sky"] and stated_params["n_stars"] == params["n_stars"]  # same draws
    assert not np.allclose(drawn, stated)
    from astrosr.simulate import simulate_fields

    path = simulate_fields(tmp_path, n=1, seed=2000, size=128, psf_fwhm=4.0, psf_beta=2.5)[0]
    header = fits.getheader(path)
    assert header["PSFFWHM"] == 4.0 and header["PSFBETA"] == 2.5


def test_a_crowded_field_has_its_star_count_and_more_light():
    plain, params = simulate_image(np.random.default_rng([3, 0]), size=128)
    crowded, crowded_params = simulate_image(np.random.default_rng([3, 0]), size=128, stars=(2000.0, 4000.0))
    assert 2000 <= crowded_params["n_stars"] <= 4000 and 30 <= params["n_stars"] <= 200
    assert crowded_params["sky"] == params["sky"]  # the field's draws before the stars are the same
    # thousands of power-law stars add light above the sky everywhere: the median rises by more than the noise
    assert np.median(crowded) - np.median(plain) > params["noise_std"]


def test_a_confusion_limited_crowd_hides_in_the_noise_below_its_brightest_star():
    from astrosr.psf import gamma_of_fwhm

    kw = dict(size=256, stars=(20000.0, 20000.0), psf_fwhm=1.5, psf_beta=3.0)
    data, params = simulate_image(np.random.default_rng([4, 0]), faintest=0.3, brightest=50.0, **kw)
    noise = params["noise_std"]
    # the peak of a unit-flux star centred on a pixel, computed apart from the simulator's stamp
    y, x = np.mgrid[-20:21, -20:21]
    moffat = (1 + (x**2 + y**2) / gamma_of_fwhm(1.5, 3.0) ** 2) ** -3.0
    peak_fraction = moffat.max() / moffat.sum()
    assert params["star_flux_min"] * peak_fraction >= 0.3 * noise * (1 - 1e-9)
    assert params["star_flux_max"] * peak_fraction <= 50.0 * noise * (1 + 1e-9)
    assert params["star_faintest"] == 0.3 and params["star_brightest"] == 50.0
    # a low dynamic range: the brightest pixels stand a few tens of noise std above the sky (galaxy and crowd)
    bright, plain = simulate_image(np.random.default_rng([4, 0]), **kw)
    span = np.percentile(data, 99.9) - np.percentile(data, 0.5)
    assert span < 0.2 * (np.percentile(bright, 99.9) - np.percentile(bright, 0.5))
    assert plain["sky"] == params["sky"]  # the same draws


def test_a_stated_galaxy_peak_sets_the_central_galaxys_amplitude_only():
    _, params = simulate_image(np.random.default_rng([5, 0]), size=128)
    _, bright = simulate_image(np.random.default_rng([5, 0]), size=128, galaxy_peak=(100.0, 400.0))
    amplitude = bright["galaxies"][0]["amplitude"] / bright["noise_std"]
    assert 100.0 <= amplitude <= 400.0 and 1.0 <= params["galaxies"][0]["amplitude"] / params["noise_std"] <= 8.0
    assert bright["galaxies"][1:] == params["galaxies"][1:] and bright["n_stars"] == params["n_stars"]
