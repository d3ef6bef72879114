"""PSF kernels and the bench-v1 degradation, checked against independent computations."""

import numpy as np
import pytest
from astropy.convolution import convolve as astropy_convolve
from astropy.io import fits
from astropy.modeling import fitting, models
from astropy.stats import sigma_clipped_stats
from scipy import ndimage, special

from astrosr.degrade import background_stats, block_average, convolve_extend, degrade, percentile_limits
from astrosr.psf import BENCH_V1_PSF, PSF, airy_psf, gaussian_psf, measure_fwhm, moffat_psf, read_psf
from astrosr.errors import ConfigError, InputError


def _fit(kernel, model):
    half = kernel.shape[0] // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    return fitting.LevMarLSQFitter()(model, x, y, kernel, maxiter=2000)


@pytest.mark.parametrize("fwhm", [2.5, 3.3, 4.0, 5.5])
def test_moffat_fwhm_measured_by_a_fit(fwhm):
    kernel = moffat_psf(fwhm, beta=3.0)
    assert kernel.shape == (41, 41)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    fit = _fit(kernel, models.Moffat2D(amplitude=kernel.max(), x_0=0.3, y_0=-0.2, gamma=2.0, alpha=2.0))
    assert abs(fit.fwhm / fwhm - 1) < 0.01
    assert fit.alpha.value == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("fwhm", [2.5, 4.0, 5.5])
def test_gaussian_fwhm_measured_by_a_fit(fwhm):
    kernel = gaussian_psf(fwhm)
    assert kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1.0, abs=1e-12)
    fit = _fit(kernel, models.Gaussian2D(amplitude=kernel.max(), x_mean=0.2, y_mean=0.1, x_stddev=1.0, y_stddev=1.5))
    assert abs(fit.x_fwhm / fwhm - 1) < 0.01 and abs(fit.y_fwhm / fwhm - 1) < 0.01


def test_bench_v1_psf_is_moffat_4_3_41():
    gamma = 4.0 / (2 * np.sqrt(2 ** (1 / 3) - 1))
    assert gamma == pytest.approx(3.923, abs=5e-4)  # the figure BENCHMARK.md prints
    y, x = np.mgrid[-20:21, -20:21]
    expected = (1 + (x**2 + y**2) / gamma**2) ** -3.0
    np.testing.assert_allclose(BENCH_V1_PSF.kernel(), expected / expected.sum(), rtol=1e-12)


def test_airy_first_dark_ring_at_radius():
    kernel = airy_psf(5.0, size=41)
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel[20, 25] < 1e-12 * kernel.max()  # exactly on the first zero
    x = special.jn_zeros(1, 1)[0] * 3 / 5.0
    assert kernel[20, 23] / kernel[20, 20] == pytest.approx((2 * special.j1(x) / x) ** 2, rel=1e-12)


def test_measure_fwhm_of_known_kernels():
    for fwhm in (2.5, 4.0, 6.0):
        assert measure_fwhm(gaussian_psf(fwhm, size=41)) == pytest.approx(fwhm, rel=0.01)
    # Airy FWHM = 1.029 lambda/D, first zero at 1.2197 lambda/D
    assert measure_fwhm(airy_psf(6.0)) == pytest.approx(6.0 * 1.029 / 1.2197, rel=0.02)


def test_read_psf_file_unit_sum_and_resampled(data_dir):
    path = data_dir / "irac_ch1_flight.fits"
    kernel = read_psf(path)
    raw = fits.getdata(path).astype(np.float64)
    assert kernel.shape == (81, 81) and kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, np.clip(raw, 0, None) / np.clip(raw, 0, None).sum(), rtol=1e-6)
    coarse = read_psf(path, pixscale=0.30525, image_pixscale=1.2)
    assert coarse.shape[0] % 2 == 1 and coarse.shape[1] % 2 == 1 and coarse.shape[0] < 25
    assert coarse.sum() == pytest.approx(1.0) and coarse.min() >= 0
    assert measure_fwhm(coarse) == pytest.approx(measure_fwhm(kernel) * 0.30525 / 1.2, rel=0.1)


def test_psf_dataclass_builds_records_and_describes(data_dir):
    psf = PSF(shape="gaussian", fwhm=3.0)
    np.testing.assert_array_equal(psf.kernel(), gaussian_psf(3.0, size=41))
    assert psf.to_dict()["fwhm"] == 3.0 and "Gaussian FWHM=3px" in psf.describe()
    assert PSF(shape="file", path=str(data_dir / "irac_ch2_flight.fits")).kernel().shape == (81, 81)
    assert PSF(shape="airy", radius=4.0).kernel().shape == (41, 41)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape="boxy"), r"psf shape must be one of moffat, gaussian, airy, file, got 'boxy'"),
        (dict(shape="file"), r"psf shape 'file' needs a path"),
        (dict(shape="airy"), r"psf shape 'airy' needs a radius"),
    ],
)
def test_psf_dataclass_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PSF(**kwargs)


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


def test_psf_without_positive_pixels(tmp_path):
    path = tmp_path / "neg.fits"
    fits.PrimaryHDU(-np.abs(np.random.default_rng(1).normal(size=(9, 9))) - 1).writeto(path)
    with pytest.raises(InputError, match=r"neg\.fits: PSF has no positive pixels"):
        read_psf(path)


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


def test_psf_fwhm_px_is_analytic_or_measured(data_dir):

    assert PSF(fwhm=3.5).fwhm_px() == 3.5 and PSF(shape="gaussian", fwhm=2.0).fwhm_px() == 2.0
    airy = PSF(shape="airy", radius=4.0)
    assert airy.fwhm_px() == measure_fwhm(airy.kernel())
    # Airy FWHM = 1.029 lambda/D and first zero 1.22 lambda/D: FWHM / radius = 0.843
    assert abs(airy.fwhm_px() / 4.0 - 0.843) < 0.03
