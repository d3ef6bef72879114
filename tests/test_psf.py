"""The PSF specification, its kernels and FWHM, checked against independent computations."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling import fitting, models
from scipy import special

from astrosr.config import from_dict
from astrosr.errors import ConfigError, InputError
from astrosr.psf import (BENCH_V1_PSF, PSF, airy_psf, gaussian_psf, kernel_and_fwhm, matching_kernel, measure_fwhm,
                         moffat_kernel, moffat_psf, read_psf)


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
        (dict(shape="boxy"), r"psf shape must be moffat, gaussian or airy \(a kernel file or 'auto': psf.path\), got 'boxy'"),
        (dict(shape="file"), r"psf shape 'file' needs a path"),
        (dict(shape="airy"), r"psf shape 'airy' needs a radius"),
    ],
)
def test_psf_dataclass_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PSF(**kwargs)


def test_psf_without_positive_pixels(tmp_path):
    path = tmp_path / "neg.fits"
    fits.PrimaryHDU(-np.abs(np.random.default_rng(1).normal(size=(9, 9))) - 1).writeto(path)
    with pytest.raises(InputError, match=r"neg\.fits: PSF has no positive pixels"):
        read_psf(path)


def test_psf_fwhm_px_is_analytic_or_measured(data_dir):

    assert PSF(fwhm=3.5).fwhm_px() == 3.5 and PSF(shape="gaussian", fwhm=2.0).fwhm_px() == 2.0
    airy = PSF(shape="airy", radius=4.0)
    assert airy.fwhm_px() == measure_fwhm(airy.kernel())
    # Airy FWHM = 1.029 lambda/D and first zero 1.22 lambda/D: FWHM / radius = 0.843
    assert abs(airy.fwhm_px() / 4.0 - 0.843) < 0.03


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"shape": "gaussian", "beta": 2.0}, r"^psf\.beta: not used by psf\.shape gaussian; drop it$"),
        ({"shape": "airy", "radius": 3.0, "fwhm": 3.0}, r"^psf\.fwhm: not used by psf\.shape airy"),
        ({"path": "k.fits", "fwhm": 3.0}, r"^psf\.fwhm: not used with psf\.path k\.fits"),
        ({"path": "k.fits", "shape": "moffat"}, r"^psf\.shape: 'moffat' given with psf\.path"),
        ({"fwhmm": 3.0}, r"^psf\.fwhmm: unknown key \(known: shape, fwhm"),
        ({"shape": "moffat,file"}, r"'file' cannot be mixed"),
        ({"pixscale": -1.0, "path": "k.fits"}, r"psf\.pixscale: must be > 0"),
    ],
)
def test_keys_a_shape_does_not_use_are_errors(keys, message):
    with pytest.raises(ConfigError, match=message):
        PSF.from_keys(keys)


def test_keys_from_a_yaml_section_or_a_command_line():
    assert PSF.from_keys({"fwhm": "3"}) == PSF(fwhm=3.0)  # a number typed on a command line
    assert PSF.from_keys({"path": "k.fits"}) == PSF(shape="file", path="k.fits")
    assert PSF.from_keys({"shape": "moffat,gaussian", "fwhm": "2.5:5.5", "beta": 3.0}).ranged
    assert from_dict(PSF, {"shape": "gaussian", "fwhm": 2.0}) == PSF(shape="gaussian", fwhm=2.0)
    with pytest.raises(ConfigError, match=r"^evaluate\.psf\.beta: not used"):
        from_dict(PSF, {"shape": "gaussian", "beta": 2.0}, where="evaluate.psf")


def test_draws_consume_the_stream_as_an_independent_draw_would():
    spec = PSF(shape="moffat,gaussian", fwhm="2.5:5.5", beta="2:4", size=21)
    drawn = [spec.draw(np.random.default_rng(7)) for _ in range(1)][0]
    rng = np.random.default_rng(7)
    shape = ["moffat", "gaussian"][int(rng.integers(2))]
    fwhm, beta = float(rng.uniform(2.5, 5.5)), float(rng.uniform(2, 4))
    assert drawn == PSF(shape=shape, fwhm=fwhm, beta=beta, size=21)
    # fixed values consume nothing: the stream goes on exactly as without the draw
    rng = np.random.default_rng(1)
    assert PSF(fwhm=3.0).draw(rng) == PSF(fwhm=3.0) and rng.uniform() == np.random.default_rng(1).uniform()


def test_a_test_field_takes_bench_v1_values_where_training_gives_a_range():
    assert PSF(shape="moffat,gaussian", fwhm="2.5:5.5", beta="2:4").nominal() == PSF(fwhm=4.0, beta=3.0)
    assert PSF(shape="gaussian", fwhm=3.0).nominal() == PSF(shape="gaussian", fwhm=3.0)
    assert PSF(shape="airy", radius="2:4").nominal().radius == 3.0
    with pytest.raises(ConfigError, match=r"is a range of PSFs"):
        PSF(fwhm="2:5").kernel()


def test_a_file_psf_is_named_by_its_absolute_path_and_its_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fits.writeto("k.fits", moffat_psf(3.0, size=15))
    psf = PSF(path="k.fits", shape="file").absolute()
    assert psf.path == str(tmp_path / "k.fits")
    first = psf.identity()
    fits.writeto("k.fits", moffat_psf(3.5, size=15), overwrite=True)
    assert psf.identity() != first and psf.identity().startswith(f"PSF file {tmp_path / 'k.fits'} sha256 ")
    with pytest.raises(InputError, match=r"gone\.fits: PSF file not found"):
        PSF(shape="file", path="gone.fits").identity()


def test_kernel_and_fwhm_of_a_psf_or_an_array():
    kernel, fwhm = kernel_and_fwhm(PSF(shape="gaussian", fwhm=3.0))
    assert fwhm == 3.0 and kernel.sum() == pytest.approx(1.0)
    raw = 5.0 * gaussian_psf(3.0, size=31)
    kernel, fwhm = kernel_and_fwhm(raw)
    assert kernel.sum() == pytest.approx(1.0) and fwhm == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ConfigError, match="odd sides"):
        kernel_and_fwhm(np.ones((4, 5)))


def test_moffat_kernel_has_the_stated_fwhm():
    # independent: the half-maximum area of a finely sampled round Moffat equals pi (FWHM / 2)^2
    assert measure_fwhm(moffat_kernel(8.0, 3.0)) == pytest.approx(8.0, rel=0.02)
    elongated = moffat_kernel(6.0, 3.0, ellipticity=0.2, angle=90.0)
    assert elongated[:, elongated.shape[1] // 2].sum() > elongated[elongated.shape[0] // 2].sum()  # major axis along y


@pytest.mark.parametrize("fwhm_in, beta, fwhm_out", [(2.8, 2.8, 2.0), (4.0, 3.0, 2.0), (6.0, 2.0, 2.0), (3.0, 4.0, 1.5)])
def test_the_matching_kernel_takes_the_output_psf_to_the_image_psf(fwhm_in, beta, fwhm_out):
    from scipy.signal import fftconvolve

    image, target = moffat_kernel(fwhm_in, beta, size=41), moffat_kernel(fwhm_out, beta, size=25)
    kernel = matching_kernel(image, target)
    padded = np.pad(target, 8)
    assert np.abs(fftconvolve(padded, kernel, mode="same") - image).max() < 0.01 * image.max()
    assert kernel.sum() == pytest.approx(1.0)
