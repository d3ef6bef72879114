"""The kernel deblur removes, the declared output PSF and the checks that refuse an impossible request."""

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from scipy.signal import fftconvolve

from astrosr.cli import cli
from astrosr.errors import InputError
from astrosr.psf import PSF, matching_kernel, moffat_kernel
from astrosr.psf_matching import match_psf, rendered_fwhm, trained_range
from astrosr.simulate import star_field
from astrosr.stars import resolution_stars, star_fwhm


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    out = {}
    for name, fwhm in (("sharp", 1.8), ("seeing", 5.0), ("narrow", 2.5)):
        out[name] = root / f"{name}.fits"
        fits.writeto(out[name], star_field(fwhm, 3.0, size=200, stars=40, seed=710).astype(np.float32))
    return out


def test_a_measured_psf_is_matched_to_the_output_psf():
    image = star_field(4.0, 2.5, size=256, stars=60, seed=711)
    match = match_psf(image, PSF(shape="auto"), target_fwhm=2.0)
    assert match.source == "measured" and match.image_fwhm == pytest.approx(4.0, rel=0.03) and match.n_stars >= 15
    # the kernel takes the declared output PSF (a Moffat of FWHM 2 with the image's beta) to the measured PSF
    measured = moffat_kernel(match.image_fwhm, match.image_beta, size=match.kernel.shape[0])
    output = moffat_kernel(2.0, match.image_beta, size=match.kernel.shape[0])
    assert np.abs(fftconvolve(output, match.kernel, mode="same") - measured).max() < 0.01 * measured.max()
    cards = dict((k, v) for k, v, _ in match.cards())
    assert cards["PSFSHAPE"] == "MOFFAT" and cards["PSFFWHM"] == 2.0 and cards["PSFBETA"] == pytest.approx(2.5, rel=0.15)
    assert cards["ASRIPSRC"] == "measured" and cards["ASRNSTAR"] == match.n_stars


def test_no_output_psf_removes_the_stated_psf_itself():
    match = match_psf(np.random.default_rng(0).normal(0, 1, (64, 64)), PSF(fwhm=4.0), target_fwhm=0)
    np.testing.assert_allclose(match.kernel, PSF(fwhm=4.0).kernel())
    assert match.target_fwhm is None and dict((k, v) for k, v, _ in match.cards())["PSFSHAPE"] == "NONE"


def test_rendered_fwhm_of_a_stated_psf_is_what_its_stars_would_measure():
    # independent: stars drawn with that very PSF measure the same
    image = star_field(3.0, 3.0, size=256, stars=60, seed=712)
    stars = resolution_stars(image)
    assert rendered_fwhm(moffat_kernel(3.0, 3.0, size=31), stars) == pytest.approx(star_fwhm(image, stars), rel=0.03)


def test_a_stated_psf_broader_than_the_stars_is_refused(fields):
    image = fits.getdata(fields["narrow"]).astype(float)
    with pytest.raises(InputError, match=r"narrow: its stars measure 2\.\d\d px FWHM by a Gaussian fit, narrower than "
                                         r"the [45]\.\d\d px of the stated PSF drawn and fitted at the same stars"):
        match_psf(image, PSF(fwhm=5.0), name="narrow")
    assert match_psf(image, PSF(fwhm=5.0), ignore_psf_check=True).image_fwhm == 5.0
    assert match_psf(image, PSF(fwhm=2.5)).image_fwhm == 2.5  # its own PSF passes


def test_nothing_to_deblur_is_refused_and_says_what_would_help(fields):
    image = fits.getdata(fields["sharp"]).astype(float)
    with pytest.raises(InputError, match=r"already at or below the output PSF \(FWHM 2 input px\): nothing to deblur "
                                         r"\(target_fwhm below 1\.8\d would sharpen it\)"):
        match_psf(image, PSF(shape="auto"), name="sharp")
    # a measured PSF's FWHM is the Moffat's before pixel integration: the message also gives what the stars show
    stars = star_fwhm(image, resolution_stars(image))
    with pytest.raises(InputError, match=rf"before pixel integration; its stars measure {stars:.2f} px\) is already"):
        match_psf(image, PSF(shape="auto"), name="sharp")
    with pytest.raises(InputError, match=r"undersampled: sharper needs super-resolution"):
        match_psf(image, PSF(fwhm=1.5, beta=3.0), target_fwhm=2.0, ignore_psf_check=False)
    assert match_psf(image, PSF(shape="auto"), target_fwhm=1.5).target_fwhm == 1.5


def test_a_kernel_outside_the_training_range_is_a_note_not_an_error(caplog):
    image = star_field(2.8, 3.0, size=200, stars=40, seed=713)
    match = match_psf(image, PSF(shape="auto"), model_info={"psf": {"fwhm": 4.0, "fwhm_range": [2.5, 5.5]}})
    assert match.kernel_fwhm < 2.25 and "outside the model's training range 2.50-5.50 px" in match.notes[0]
    assert "outside the model's training range" in caplog.text
    assert trained_range({"psf": None}) is None


@pytest.mark.parametrize("flags, name, message", [
    (["--psf-fwhm", "5"], "narrow", "narrower than the"),
    ([], "sharp", "nothing to deblur (--target-fwhm below"),
])
def test_each_check_through_the_cli(fields, tmp_path, flags, name, message):
    # one input: one line, exit 2, nothing written
    single = CliRunner().invoke(cli, ["deblur", str(fields[name]), "-o", str(tmp_path / "one"), *flags])
    lines = single.stderr.strip().splitlines()
    assert single.exit_code == 2 and len(lines) == 1 and message in lines[0] and name in lines[0], single.output
    assert not list((tmp_path / "one").glob("*.fits")) if (tmp_path / "one").exists() else True
    # a batch of two: the other file is written, exit 1; --ignore-psf-check lets the refused one through
    good = []
    batch = CliRunner().invoke(cli, ["deblur", str(fields[name]), str(fields["seeing"]), "-o", str(tmp_path / "two"),
                                     *(flags or good)])
    assert batch.exit_code == 1 and "1 done, 0 skipped, 1 failed" in batch.output, batch.output
    assert (tmp_path / "two" / "seeing_deblur.fits").is_file() and not (tmp_path / "two" / f"{name}_deblur.fits").exists()
    forced = CliRunner().invoke(cli, ["deblur", str(fields[name]), "-o", str(tmp_path / "forced"), *flags,
                                      "--ignore-psf-check"])
    assert forced.exit_code == 0, forced.output
    header = fits.getheader(tmp_path / "forced" / f"{name}_deblur.fits")
    assert "checks ignored" in header["ASRPSF"] and header["PSFSHAPE"] == "MOFFAT" and header["PSFFWHM"] == 2.0


def test_a_psf_grid_restores_each_region_with_its_own_kernel_and_leaves_no_seam():
    from astrosr.deblur import DeblurOptions, deblur_image
    from astrosr.errors import ConfigError
    from astrosr.models import ResVAE
    image = star_field(2.8, 3.0, fwhm_right=5.0, size=384, stars=150, seed=720)
    whole = match_psf(image, PSF(shape="auto"), grid=3)
    cells = whole.regions
    assert len(cells) == 9 and "3x3 grid" in whole.described
    widths = [m.image_fwhm for _, m in cells]
    assert widths[2] > widths[0] + 1.0 and widths[5] > widths[3] + 1.0  # the right column is wider, as simulated
    # an identity network without the consistency step gives the image back: the blend weights sum to 1
    restored = deblur_image(image, ResVAE(), psf_grid=3, consistency=False)
    np.testing.assert_allclose(restored.sr, image, rtol=1e-5, atol=1e-3)
    with pytest.raises(ConfigError, match=r"psf_grid: 3 measures the PSF per region; it needs psf auto"):
        DeblurOptions(psf=PSF(fwhm=3.0), psf_grid=3)


def test_deblur_with_the_psf_measured_brings_a_simulated_field_to_its_declared_psf(tmp_path):
    """A simulated field as observed (seed 2000+: never trained on), the README's call: stars at the target, flux kept."""
    from astrosr.deblur import deblur_file
    from astrosr.simulate import simulate_fields
    from astrosr.stars import flux_ratio

    path = simulate_fields(tmp_path, n=1, seed=2002, size=512, psf_fwhm=4.0, psf_beta=3.0)[0]
    image = fits.getdata(path).astype(float)
    result = deblur_file(path, tmp_path / "out", device="cpu")
    sr = fits.getdata(result.output).astype(float)
    header = fits.getheader(result.output)
    stars = resolution_stars(image)
    assert len(stars) >= 5
    target = rendered_fwhm(moffat_kernel(2.0, header["PSFBETA"], size=31), stars)
    assert header["ASRIFWHM"] == pytest.approx(4.0, rel=0.05)  # the measured PSF is the simulated one
    assert star_fwhm(sr, stars) == pytest.approx(target, rel=0.15)
    assert flux_ratio(image, sr, stars, min(12.0, 4 * star_fwhm(image, stars))) == pytest.approx(1.0, abs=0.03)


def test_the_output_is_checked_against_the_declared_psf_and_a_broader_target_is_a_convolution(tmp_path):
    from astrosr.deblur import deblur_image
    from astrosr.models import ResVAE
    from astrosr.psf_matching import check_output

    image = star_field(3.5, 3.0, size=256, stars=60, seed=714)
    # an identity network without the step leaves the stars as they were: the check says it fell short
    restored = deblur_image(image, ResVAE(), consistency=False)
    assert restored.psf.stars["output"] == pytest.approx(restored.psf.stars["input"], rel=1e-3)
    assert any("falls short of the declared PSF" in n for n in restored.psf.notes)
    cards = dict((k, v) for k, v, _ in restored.psf.cards())
    assert cards["ASRSFWOU"] > 1.15 * cards["ASRSFWTG"]
    # stars at exactly the declared PSF: no note (the observed field is that one blurred to 3.5 px)
    ideal = star_field(2.0, 3.0, size=256, stars=60, seed=715)
    blur = matching_kernel(moffat_kernel(3.5, 3.0, size=41), moffat_kernel(2.0, 3.0, size=41))
    observed = fftconvolve(ideal - 100.0, blur, mode="same") + 100.0
    match = match_psf(observed, PSF(shape="auto"), target_fwhm=2.0)
    check_output(observed, ideal, match)
    assert match.stars["output"] == pytest.approx(match.stars["declared"], rel=0.1) and not match.notes
    # a target broader than the image's PSF, overridden: convolved to it, and its stars then have it
    broad = deblur_image(image, ResVAE(), target_fwhm=5.0, ignore_psf_check=True)
    assert broad.psf.convolve and broad.psf.stars["output"] == pytest.approx(broad.psf.stars["declared"], rel=0.03)
    assert "convolved to the output PSF, not deblurred" in broad.psf.notes[0]


def test_an_output_with_wider_stars_than_the_input_is_said_plainly():
    from astrosr.degrade import convolve_extend
    from astrosr.psf import gaussian_psf
    from astrosr.psf_matching import check_output

    image = star_field(3.5, 3.0, size=256, stars=60, seed=716)
    match = match_psf(image, PSF(shape="auto"), target_fwhm=2.0)
    check_output(image, convolve_extend(image, gaussian_psf(2.0, size=15)), match)
    assert match.stars["output"] > match.stars["input"] and "WIDER than they went in" in match.notes[-1]


def test_an_output_psf_nothing_could_check_is_said():
    from astrosr.deblur import deblur_image
    from astrosr.models import ResVAE

    sky = 100.0 + np.random.default_rng(3).normal(0.0, 1.0, (128, 128))  # no star to measure the output by
    restored = deblur_image(sky, ResVAE(), psf=PSF(fwhm=3.0), target_fwhm=2.0)
    assert restored.psf.stars == {}
    assert any("declared, not checked: 0 resolution star(s)" in n for n in restored.psf.notes)
