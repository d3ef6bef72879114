"""The bench-v1 degradation, checked against independent computations."""

import numpy as np
import pytest
from astropy.convolution import convolve as astropy_convolve
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy import ndimage

from astrosr.degrade import background_stats, bench_v1_degrade, block_average, convolve_extend, degrade, percentile_limits
from astrosr.errors import ConfigError
from astrosr.psf import BENCH_V1_PSF, airy_psf, gaussian_psf, moffat_psf


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: moffat_psf(0), r"psf fwhm must be > 0, got 0"),
        (lambda: moffat_psf(4, beta=1), r"psf beta must be > 1, got 1"),
        (lambda: gaussian_psf(-1), r"psf fwhm must be > 0, got -1"),
        (lambda: airy_psf(0), r"psf airy radius must be > 0, got 0"),
        (lambda: moffat_psf(4, size=40), r"psf size must be an odd integer >= 3, got 40"),
        (lambda: convolve_extend(np.ones((9, 9)), np.ones((2, 3))), r"psf kernel must have odd sides"),
        (lambda: degrade(np.ones((9, 9)), np.ones((3, 3)) / 9, noise_std=1, rng=np.random.default_rng(), scale=1.5),
         r"scale must be a positive integer, got 1.5"),
    ],
)
def test_kernel_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_degradation_equals_bench_v1_recipe_on_a_real_image(data_dir):
    ori = fits.getdata(data_dir / "reprojected_sdss_i.fits").astype(np.float64)
    psf = BENCH_V1_PSF.kernel()
    std = sigma_clipped_stats(ori[np.isfinite(ori)], sigma=3, maxiters=5)[2]
    expected = ndimage.convolve(ori, psf, mode="nearest") + np.random.default_rng(0).normal(0, std, ori.shape)
    blu = degrade(ori, psf, noise_std=background_stats(ori)[2], rng=np.random.default_rng(0))
    scale = np.abs(expected).max()
    assert np.abs(blu - expected).max() <= 1e-10 * scale


def test_convolution_matches_astropy_extend_with_nan_as_zero(data_dir):
    ori = fits.getdata(data_dir / "gc_bolocam_gps.fits").astype(np.float64)[:130, :140]
    assert np.isnan(ori).any()  # the survey edge: real NaN pixels
    psf = moffat_psf(4.0, size=21)
    expected = astropy_convolve(ori, psf, boundary="extend", nan_treatment="fill", fill_value=0.0,
                                normalize_kernel=False)
    np.testing.assert_allclose(convolve_extend(ori, psf), expected, rtol=0, atol=1e-10 * np.nanmax(np.abs(ori)))


def test_convolution_conserves_flux_away_from_edges(rng):
    image = np.zeros((200, 220))
    ys, xs = rng.integers(60, 140, 12), rng.integers(60, 160, 12)
    image[ys, xs] = rng.uniform(10, 1000, 12)
    for kernel in (moffat_psf(4.0), gaussian_psf(3.0), airy_psf(4.0)):
        out = convolve_extend(image, kernel)
        assert out.sum() == pytest.approx(image.sum(), rel=1e-10)
        # each source's flux stays inside a box of the kernel's reach
        assert out[35:170, 35:190].sum() == pytest.approx(image.sum(), rel=1e-10)


def test_noise_std_matches(rng):
    ori = np.zeros((512, 512))
    blu = degrade(ori, moffat_psf(4.0), noise_std=5.0, rng=np.random.default_rng(3))
    assert blu.std() == pytest.approx(5.0, rel=0.01)
    assert abs(blu.mean()) < 5 * 5.0 / 512


def test_poisson_term_scales_with_signal():
    ori = np.zeros((400, 400))
    ori[:, 300:] = 1e4  # a quarter of the image bright: the median stays at 0
    blu = degrade(ori, moffat_psf(4.0), noise_std=2.0, rng=np.random.default_rng(5), poisson_gain=4.0)
    bright = blu[20:380, 330:380] - 1e4
    dark = blu[20:380, 20:250]
    assert dark.std() == pytest.approx(2.0, rel=0.03)
    assert bright.std() == pytest.approx(np.sqrt(2.0**2 + 1e4 / 4.0), rel=0.03)


def test_scale_block_averages_the_same_noisy_blu(rng):
    ori = rng.normal(size=(130, 132))
    k = moffat_psf(3.0)
    full = degrade(ori, k, noise_std=0.5, rng=np.random.default_rng(9))
    half = degrade(ori, k, noise_std=0.5, rng=np.random.default_rng(9), scale=2)
    assert half.shape == (65, 66)
    expected = np.array([[full[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for j in range(66)] for i in range(65)])
    np.testing.assert_allclose(half, expected, rtol=1e-12)
    assert block_average(full[:131, :131], 3).shape == (43, 43)


def test_background_and_percentiles_are_bench_v1(data_dir):
    ori = fits.getdata(data_dir / "gc_bolocam_gps.fits").astype(np.float64)
    finite = ori[np.isfinite(ori)]
    assert background_stats(ori) == pytest.approx(sigma_clipped_stats(finite, sigma=3, maxiters=5), rel=1e-12)
    assert percentile_limits(ori) == pytest.approx(tuple(np.percentile(finite, [0.5, 99.9])), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 40_001])
def test_background_stats_match_astropy_on_heavy_tails(rng, n):
    image = rng.standard_t(2, size=n) * 3 + 10 + (rng.random(n) < 0.05) * rng.pareto(1.0, n) * 100
    image[rng.random(n) < 0.1] = np.nan
    finite = image[np.isfinite(image)]
    if finite.size:
        expected = sigma_clipped_stats(finite, sigma=3, maxiters=5)
        assert background_stats(image.reshape(1, -1)) == pytest.approx(expected, rel=1e-12)
    assert background_stats(np.full((4, 4), 5.0)) == (5.0, 5.0, 0.0)


def test_bench_v1_degrade_is_rng0_noise_at_oris_background_std(data_dir):
    ori = fits.getdata(data_dir / "M51.fits").astype(float)
    blu, std = bench_v1_degrade(ori, BENCH_V1_PSF.kernel())
    _, _, expected_std = sigma_clipped_stats(ori, sigma=3.0, maxiters=5)
    assert std == pytest.approx(expected_std, rel=1e-9)
    expected = ndimage.convolve(ori, BENCH_V1_PSF.kernel(), mode="nearest") + np.random.default_rng(0).normal(0, std, ori.shape)
    np.testing.assert_allclose(blu, expected, rtol=0, atol=1e-8)
    twice, _ = bench_v1_degrade(ori, BENCH_V1_PSF.kernel(), noise=2.0)
    np.testing.assert_allclose(twice - blu, expected - ndimage.convolve(ori, BENCH_V1_PSF.kernel(), mode="nearest"),
                               atol=1e-8)


def test_a_tile_with_its_margin_is_degraded_as_the_whole_image(rng):
    """prepare's per-tile path: the window with the kernel's half-width of context gives the whole image's pixels."""
    ori = rng.normal(100.0, 10.0, (96, 96))
    kernel = moffat_psf(3.0, size=9)
    whole = convolve_extend(ori, kernel)
    padded = np.pad(ori, 4, mode="edge")
    y, x, side = 30, 50, 32
    window = padded[y : y + side + 8, x : x + side + 8]
    tile = degrade(window, kernel, noise_std=0.0, rng=np.random.default_rng(0), margin=True)
    np.testing.assert_allclose(tile, whole[y : y + side, x : x + side], rtol=0, atol=1e-9)


def test_poisson_term_counts_only_signal_above_the_sky_level():
    ori = np.full((200, 200), 500.0)  # all sky: a background of 500 carries no shot noise above itself
    blu = degrade(ori, moffat_psf(3.0), noise_std=1.0, rng=np.random.default_rng(3), poisson_gain=1.0, background=500.0)
    plain = degrade(ori, moffat_psf(3.0), noise_std=1.0, rng=np.random.default_rng(3))
    # only the clipped half of the Gaussian noise (at most a few ADU above the sky) adds a term of ~sqrt(1)
    assert np.std(blu - plain) < 1.0
    loud = degrade(ori, moffat_psf(3.0), noise_std=1.0, rng=np.random.default_rng(3), poisson_gain=1.0)
    assert np.std(loud - plain) == pytest.approx(np.sqrt(500.0), rel=0.05)
