"""The image's PSF from its own stars, against simulated fields whose pixel-integrated Moffat PSF is known."""

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from astrosr.cli import cli
from astrosr.errors import InputError
from astrosr.psf import measure_fwhm, moffat_kernel
from astrosr.psf_measure import measure_psf
from astrosr.simulate import star_field

# (fwhm, beta, ellipticity, angle, size, stars): FWHM 2.5-6 px, beta 2-4, ellipticity up to 0.2
TRUTHS = [(2.5, 2.0, 0.0, 0.0, 256, 80), (3.0, 3.0, 0.1, 30.0, 256, 80), (4.0, 2.5, 0.2, 120.0, 384, 80),
          (6.0, 4.0, 0.0, 0.0, 512, 60)]


@pytest.mark.parametrize("fwhm, beta, ellipticity, angle, size, stars", TRUTHS)
def test_the_measured_psf_is_the_simulated_one(fwhm, beta, ellipticity, angle, size, stars):
    image = star_field(fwhm, beta, ellipticity=ellipticity, angle=angle, size=size, stars=stars, seed=700)
    psf = measure_psf(image, with_epsf=fwhm == 3.0)
    assert psf.fwhm == pytest.approx(fwhm, rel=0.03)
    assert psf.beta == pytest.approx(beta, rel=0.15)
    assert psf.ellipticity == pytest.approx(ellipticity, abs=0.03)
    if ellipticity:
        assert abs((psf.angle - angle + 90) % 180 - 90) < 5
    assert psf.n_stars >= 15 and psf.kernel.shape[0] % 2 == 1 and psf.kernel.sum() == pytest.approx(1.0)
    if psf.epsf is not None:  # photutils' empirical PSF agrees with the fit
        assert measure_fwhm(psf.epsf) == pytest.approx(measure_fwhm(psf.kernel), rel=0.05)


def test_a_psf_that_varies_across_the_field_is_recovered_on_the_grid():
    image = star_field(2.5, 3.0, fwhm_right=4.5, size=384, stars=150, seed=701)
    psf = measure_psf(image, grid=3)
    assert len(psf.grid) == 9
    for cell in psf.grid:
        truth = 2.5 + 2.0 * (cell["x0"] + cell["x1"]) / 2 / 384
        assert cell["n_stars"] >= 5 and cell["fwhm"] == pytest.approx(truth, rel=0.06), cell
    rows = np.array([c["fwhm"] for c in psf.grid]).reshape(3, 3)
    assert np.all(np.diff(rows, axis=1) > 0)  # wider to the right in every row


def test_too_few_stars_is_one_line_naming_the_count_and_thresholds():
    image = star_field(3.0, 3.0, stars=3, seed=702)
    with pytest.raises(InputError, match=r"field: 3 usable PSF star\(s\), 5 needed: 3 source\(s\) above 20 sigma"):
        measure_psf(image, name="field")


@pytest.mark.parametrize("header", [fits.Header({"SATURATE": 125.0}), None])
def test_saturated_stars_are_not_psf_stars(header):
    # every peak (>= 30 sigma) clipped: at the SATURATE level, or flat-topped at 15 sigma with no card to say so
    image = np.minimum(star_field(3.0, 3.0, stars=40, seed=703), 125.0 if header else 115.0)
    with pytest.raises(InputError, match=r"0 usable PSF star\(s\).* saturated or flat-topped"):
        measure_psf(image, header=header, threshold=10.0)


def test_the_psf_command_writes_kernel_and_picture(tmp_path):
    good = tmp_path / "field.fits"
    fits.writeto(good, star_field(3.0, 2.5, size=200, stars=40, seed=704).astype(np.float32))
    empty = tmp_path / "empty.fits"
    fits.writeto(empty, np.random.default_rng(0).normal(100.0, 1.0, (200, 200)).astype(np.float32))
    result = CliRunner().invoke(cli, ["psf", str(good), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with fits.open(tmp_path / "out" / "field_psf.fits") as hdul:
        kernel, header = hdul[0].data, hdul[0].header
        assert [h.name for h in hdul] == ["PRIMARY", "EPSF"]
    assert kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert header["PSFFWHM"] == pytest.approx(3.0, rel=0.03) and header["PSFNSTAR"] >= 5
    assert header["PSFMETH"] == "moffat" and (tmp_path / "out" / "field_psf.png").stat().st_size > 10_000
    # one image that cannot be measured: one line, exit 2, nothing written
    result = CliRunner().invoke(cli, ["psf", str(empty), "-o", str(tmp_path / "out2")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "empty.fits: 0 usable PSF star(s)" in lines[0], result.output
    assert not list((tmp_path / "out2").glob("*.fits"))
    # a batch: the good one is written, the table says which failed, exit 1
    result = CliRunner().invoke(cli, ["psf", str(empty), str(good), "-o", str(tmp_path / "out3"), "--grid", "2",
                                      "--min-stars", "3"])
    assert result.exit_code == 1 and "usable PSF star" in result.output, result.output
    with fits.open(tmp_path / "out3" / "field_psf.fits") as hdul:
        assert len(hdul["GRID"].data) == 4


def test_a_fit_pinned_at_the_moffat_bound_is_said(data_dir):
    from astrosr.fits_io import read_image

    # MSX's 8 um map of the Galactic centre: diffuse emission and a few compact knots, no stellar PSF
    image = read_image(data_dir / "gc_msx_e.fits")
    psf = measure_psf(image.data, header=image.header, name="gc_msx_e")
    assert psf.beta == pytest.approx(1.1, abs=0.02)
    assert any("at the fit's lower bound 1.1" in n and "doubtful" in n for n in psf.notes)
    # a Moffat star field is not, nor one of near-Gaussian stars whose beta runs to the upper bound
    for beta in (3.0, 9.5):
        assert not any("fit's lower bound" in n for n in measure_psf(star_field(3.0, beta, seed=1)).notes)
