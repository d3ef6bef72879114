"""astrosr deblur: seams, headers and WCS, FITS validity, NaN, compression, batches, Dask."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner

from astrosr import __version__
from astrosr.batch import deblur_batch, expand_inputs
from astrosr.checkpoint import save_checkpoint
from astrosr.cli import cli
from astrosr.deblur import deblur_file, deblur_image
from astrosr.fits_out import output_path
from astrosr.psf import PSF
from astrosr.errors import CheckpointError, ConfigError, InputError
from astrosr.files import sha256_file
from astrosr.models import ResVAE

STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BSCALE", "BZERO", "BLANK"}


def _save_model(path, *, perturb=None, **config):
    """An untrained resvae (the identity) or, with ``perturb`` = seed, a fixed non-identity one."""
    model = ResVAE(**config)
    if perturb is not None:
        gen = torch.Generator().manual_seed(perturb)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    payload = {"model": "resvae", "model_config": model.config, "state_dict": model.state_dict(), "psf": PSF().to_dict()}
    save_checkpoint(path, payload)
    return model


#: bench-v1's convention, which these tests of the file and batch mechanics were written for: the stated Moffat
#: (FWHM 4) removed, no output PSF, on real images whose own stars are sharper than it (so the check is off)
BENCH = {"psf": PSF(), "target_fwhm": 0, "ignore_psf_check": True}
BENCH_FLAGS = ["--psf-fwhm", "4", "--target-fwhm", "0", "--ignore-psf-check"]

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    identity, trained = root / "identity.pt", root / "trained.pt"
    _save_model(identity)
    _save_model(trained, perturb=7)
    return {"identity": identity, "trained": trained}


def _crop(src, dst, rows, cols):
    """A float32 crop of a real file with its header (origin kept, so its WCS still holds)."""
    with fits.open(src) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)[rows, cols]
        header = hdul[0].header.copy()
    for key in ("BSCALE", "BZERO", "BLANK"):
        header.remove(key, ignore_missing=True)
    fits.writeto(dst, data, header)
    return dst


def _data_bits(path, ext):
    """The data's bytes in native order (a compressed HDU decodes native, a plain one big-endian)."""
    data = fits.getdata(path, ext)
    return np.ascontiguousarray(data.astype(data.dtype.newbyteorder("="))).view(np.uint8)


def _model_units_limits(image):
    lo, hi = np.percentile(image[np.isfinite(image)], [0.5, 99.9])
    return lo, hi


# --- seams ---------------------------------------------------------------------


def test_identity_model_returns_the_input_everywhere_including_tile_borders(data_dir):
    image = fits.getdata(data_dir / "gc_2mass_j.fits").astype(np.float64)[:600, :650]
    restored = deblur_image(image, ResVAE(), **BENCH, consistency=False, overlap=32)
    lo, hi = _model_units_limits(image)
    # in the model's units (what the network sees), every pixel within 1e-5
    assert np.abs(restored.sr - image).max() / (hi - lo) < 1e-5
    assert restored.blu_lo == pytest.approx(lo) and restored.blu_hi == pytest.approx(hi)


def test_output_does_not_depend_on_the_tile_grid(data_dir, models):
    image = fits.getdata(data_dir / "gc_2mass_j.fits").astype(np.float64)[:520, :600]
    model = ResVAE()
    model.load_state_dict(torch.load(models["trained"], weights_only=True)["state_dict"])
    a = deblur_image(image, model, **BENCH, consistency=False, overlap=32).sr
    b = deblur_image(image, model, **BENCH, consistency=False, overlap=96).sr  # other tile origins everywhere
    change = np.abs(a - image).max()
    assert change > 0.05 * (image.max() - image.min())  # not the identity
    assert np.abs(a - b).max() < 0.02 * change


# --- one file: header, WCS, HISTORY, fitsverify, NaN, compression -----------------


def test_wcs_and_every_input_card_are_kept_and_history_added(data_dir, models, tmp_path):
    src = data_dir / "gc_2mass_j.fits"
    result = deblur_file(src, tmp_path, **BENCH, model=models["identity"], consistency=False, device="cpu")
    assert result.status == "done" and result.output == str(tmp_path / "gc_2mass_j_deblur.fits")
    header_in = fits.getheader(src)
    with fits.open(result.output) as hdul:
        header = hdul[0].header
        data = hdul[0].data
    assert data.dtype == np.dtype(">f4") and data.shape == (720, 721)
    for card in header_in.cards:
        if card.keyword in STRUCTURAL or card.keyword in ("COMMENT", "HISTORY"):
            continue
        assert header[card.keyword] == card.value, card.keyword
    assert set(header_in["COMMENT"]) <= set(header["COMMENT"])
    ys, xs = np.mgrid[0:720:37, 0:721:41]
    sky_in = WCS(header_in).pixel_to_world(xs, ys)
    sky_out = WCS(header).pixel_to_world(xs, ys)
    assert np.abs(sky_in.separation(sky_out).arcsec).max() < 1e-6
    history = [str(h) for h in header["HISTORY"]]
    assert sha256_file(models["identity"]) in history
    assert any(h.startswith(f"astrosr {__version__} deblur") for h in history)
    assert "PSF: Moffat FWHM=4px beta=3 41x41; no output PSF; checks ignored" in history
    assert "image PSF (stated): Moffat FWHM=4px beta=3 41x41" in history
    assert header["ASRIPSRC"] == "stated" and header["ASRIFWHM"] == 4.0 and header["PSFSHAPE"] == "NONE"
    assert any("data-consistency step off; overlap 32 px" in h for h in history)
    assert header["ASRMSHA"] == sha256_file(models["identity"])
    assert header["ASRTRAIN"].startswith("Moffat FWHM=4px") and header["ASRCONS"] is False
    assert header["ASRSAMP"] == 0 and "ASRUSCAL" not in header  # no UNCERT: no card describing one
    lo, hi = _model_units_limits(fits.getdata(src).astype(np.float64))
    assert header["ASRLO"] == pytest.approx(lo) and header["ASRHI"] == pytest.approx(hi)


def test_input_datamin_datamax_are_not_carried_over(models, tmp_path):
    # they describe the input's pixel range; copied, they would be wrong for the restored image
    image = np.random.default_rng(3).normal(100, 5, (64, 64)).astype(np.float32)
    header = fits.Header({"DATAMIN": float(image.min()), "DATAMAX": float(image.max()), "OBJECT": "test"})
    src = tmp_path / "in.fits"
    fits.writeto(src, image, header)
    out = deblur_file(src, tmp_path / "out", **BENCH, model=models["identity"], device="cpu").output
    header_out = fits.getheader(out)
    assert "DATAMIN" not in header_out and "DATAMAX" not in header_out and header_out["OBJECT"] == "test"


@pytest.mark.parametrize("name", ["gc_bolocam_gps.fits", "gc_2mass_j.fits"])
def test_scale_two_rescales_the_wcs(data_dir, tmp_path, name):
    src = _crop(data_dir / name, tmp_path / name, slice(0, 90), slice(0, 100))
    model = tmp_path / "x2.pt"
    _save_model(model, scale=2)
    out = deblur_file(src, tmp_path / "out", **BENCH, model=model, consistency=False, device="cpu").output
    header_in, header_out = fits.getheader(src), fits.getheader(out)
    assert fits.getdata(out).shape == (180, 200)
    ys, xs = np.mgrid[0:90:11, 0:100:13].astype(float)
    sky_in = WCS(header_in).pixel_to_world(xs, ys)
    # input pixel centre p (0-based) is output position 2 (p + 1/2) - 1/2
    sky_out = WCS(header_out).pixel_to_world(2 * (xs + 0.5) - 0.5, 2 * (ys + 0.5) - 0.5)
    assert np.abs(sky_in.separation(sky_out).arcsec).max() < 1e-6


@pytest.fixture(scope="module")
def bolocam_outputs(data_dir, models, tmp_path_factory):
    """A corner of gc_bolocam_gps (2,305 NaN pixels) deblurred with UNCERT and MASK, plain and .fz."""
    root = tmp_path_factory.mktemp("bolocam")
    src = _crop(data_dir / "gc_bolocam_gps.fits", root / "bolocam.fits", slice(0, 160), slice(0, 200))
    kwargs = {**BENCH, "model": models["trained"], "samples": 2, "device": "cpu"}
    plain = deblur_file(src, root / "plain", **kwargs).output
    packed = deblur_file(src, root / "fz", compress=True, **kwargs).output
    return plain, packed


def test_fitsverify_finds_nothing_in_plain_and_compressed_outputs(bolocam_outputs):
    if shutil.which("fitsverify") is None:
        pytest.skip("fitsverify not installed (CI installs it with apt)")
    for path in bolocam_outputs:
        with fits.open(path) as hdul:
            assert [h.name for h in hdul][-2:] == ["MASK", "UNCERT"]
        run = subprocess.run(["fitsverify", "-e", path], capture_output=True, text=True)
        assert "0 warning(s) and 0 error(s)" in run.stdout, run.stdout[-2000:]
        assert run.returncode == 0


def test_nan_pixels_stay_nan_and_are_masked(data_dir, models, tmp_path, bolocam_outputs):
    src = data_dir / "gc_bolocam_gps.fits"
    bad = ~np.isfinite(fits.getdata(src))
    assert bad.sum() == 20399
    out = deblur_file(src, tmp_path, **BENCH, model=models["identity"], device="cpu").output
    with fits.open(out) as hdul:
        assert np.array_equal(np.isnan(hdul[0].data), bad)
        assert np.array_equal(hdul["MASK"].data, bad.astype(np.uint8))
    with fits.open(bolocam_outputs[0]) as hdul:
        uncert, corner = hdul["UNCERT"].data, bad[:160, :200]
        assert np.array_equal(np.isnan(hdul[0].data), corner) and np.array_equal(np.isnan(uncert), corner)
        assert np.nanmax(uncert) > 0 and hdul["UNCERT"].header["BUNIT"] == hdul[0].header["BUNIT"]


def test_uncert_is_a_ccddata_std_uncertainty_with_its_draws_and_scale(bolocam_outputs):
    from astropy.nddata import CCDData, StdDevUncertainty

    with fits.open(bolocam_outputs[0]) as hdul:
        head = hdul["UNCERT"].header
        assert head["UTYPE"] == "StdDevUncertainty" and head["ASRSAMP"] == 2
        assert head["ASRUSCAL"] == hdul[0].header["ASRUSCAL"] > 0
        uncert = hdul["UNCERT"].data
    ccd = CCDData.read(bolocam_outputs[0], hdu_uncertainty="UNCERT", hdu_mask="MASK", unit="adu")
    assert isinstance(ccd.uncertainty, StdDevUncertainty)
    assert np.array_equal(ccd.uncertainty.array, uncert, equal_nan=True)


def test_compressed_output_reads_back_bit_identical(bolocam_outputs):
    plain, packed = bolocam_outputs
    assert packed.endswith("bolocam_deblur.fits.fz")
    with fits.open(packed) as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU) and hdul[1].header["ASRSAMP"] == 2
    for plain_ext, packed_ext in ((0, 1), ("MASK", "MASK"), ("UNCERT", "UNCERT")):
        assert np.array_equal(_data_bits(plain, plain_ext), _data_bits(packed, packed_ext))


def test_deblur_image_rejects_bad_arrays_and_kernels():
    with pytest.raises(InputError, match="expected a 2-D image"):
        deblur_image(np.zeros((4, 8, 8)), ResVAE(), **BENCH)
    with pytest.raises(InputError, match="every pixel is NaN"):
        deblur_image(np.full((16, 16), np.nan), ResVAE(), **BENCH)
    with pytest.raises(ConfigError, match="odd sides"):
        deblur_image(np.ones((16, 16)), ResVAE(), target_fwhm=0, ignore_psf_check=True, psf=np.ones((4, 4)))


def test_bad_model_file_is_a_checkpoint_error(data_dir, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        deblur_file(data_dir / "irac_ch1_flight.fits", tmp_path, **BENCH, model=bad, device="cpu")


# --- batches -------------------------------------------------------------------


@pytest.fixture
def batch_dir(data_dir, tmp_path):
    """Two good small images, a truncated FITS, a text file named .fits and a README."""
    folder = tmp_path / "in"
    folder.mkdir()
    _crop(data_dir / "M51.fits", folder / "m51.fits", slice(100, 196), slice(120, 220))
    shutil.copy(data_dir / "irac_ch1_flight.fits", folder / "irac.fits")
    (folder / "broken.fits").write_bytes((data_dir / "gc_msx_e.fits").read_bytes()[:5000])
    (folder / "download.fits").write_text("<html>503 Service Unavailable</html>\n")
    (folder / "README.txt").write_text("not an image\n")
    return folder


def test_batch_reports_bad_files_exits_1_leaves_no_partial_files_and_resumes(batch_dir, models, tmp_path):
    out = tmp_path / "out"
    args = ["deblur", *BENCH_FLAGS, str(batch_dir), "-o", str(out), "--model", str(models["identity"]), "--device", "cpu"]
    runner = CliRunner(env={"COLUMNS": "200"})
    first = runner.invoke(cli, args)
    assert first.exit_code == 1, first.output
    assert sorted(p.name for p in out.iterdir()) == ["irac_deblur.fits", "m51_deblur.fits"]
    text = " ".join(first.output.split())
    assert "2 done, 0 skipped, 2 failed" in text
    assert "broken.fits" in text and "download.fits" in text and "not a readable FITS file" in text
    assert "README" not in text
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = runner.invoke(cli, args)
    assert second.exit_code == 1
    assert "0 done, 2 skipped, 2 failed" in " ".join(second.output.split())
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_existing_output_from_another_psf_is_an_error_unless_overwrite(data_dir, models, tmp_path):
    src = data_dir / "irac_ch1_flight.fits"
    deblur_file(src, tmp_path, **BENCH, model=models["identity"], device="cpu")
    with pytest.raises(InputError, match="not made with this model and PSF"):
        deblur_file(src, tmp_path, model=models["identity"], target_fwhm=0, ignore_psf_check=True, psf=PSF(fwhm=3.0), device="cpu")
    again = deblur_file(src, tmp_path, model=models["identity"], target_fwhm=0, ignore_psf_check=True, psf=PSF(fwhm=3.0), overwrite=True, device="cpu")
    assert again.status == "done" and fits.getheader(again.output)["ASRPSF"].startswith("Moffat FWHM=3px")


def test_existing_output_made_with_other_settings_is_not_skipped(data_dir, models, tmp_path):
    """A rerun asking for --no-consistency or --samples must not keep an image made another way."""
    src, common = data_dir / "irac_ch1_flight.fits", {**BENCH, "model": models["identity"], "device": "cpu"}
    deblur_file(src, tmp_path, **common)
    assert deblur_file(src, tmp_path, **common).status == "skipped"
    for other in ({"consistency": False}, {"samples": 2}, {"overlap": 16}):
        with pytest.raises(InputError, match=r"not made with this model and PSF, or with other consistency/samples/overlap"):
            deblur_file(src, tmp_path, **common, **other)
    again = deblur_file(src, tmp_path, **common, consistency=False, overwrite=True)
    assert again.status == "done" and fits.getheader(again.output)["ASRCONS"] is False
    assert deblur_file(src, tmp_path, **common, consistency=False).status == "skipped"


def test_a_file_psf_is_recorded_by_content_and_a_changed_kernel_is_not_skipped(data_dir, models, tmp_path, monkeypatch):
    kernel = tmp_path / "kernel.fits"
    fits.writeto(kernel, PSF(fwhm=3.0).kernel())
    monkeypatch.chdir(tmp_path)
    psf = PSF(shape="file", path="kernel.fits")
    src, common = data_dir / "irac_ch1_flight.fits", {**BENCH, "model": models["identity"], "psf": psf}
    first = deblur_batch([src], "out", **common)
    assert first[0].status == "done"
    assert fits.getheader(first[0].output)["ASRPSF"].startswith(f"PSF file {kernel} sha256 {sha256_file(kernel)[:16]};")
    assert deblur_batch([src], "out", **common)[0].status == "skipped"
    fits.writeto(kernel, PSF(fwhm=3.5).kernel(), overwrite=True)
    changed = deblur_batch([src], "out", **common)[0]
    assert changed.status == "failed" and "not made with this model and PSF" in changed.reason


def test_two_inputs_with_one_output_name_fail_before_any_work(data_dir, models, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        shutil.copy(data_dir / "irac_ch1_flight.fits", tmp_path / sub / "img.fits")
    with pytest.raises(InputError, match="all map to the output"):
        deblur_batch([tmp_path / "a", tmp_path / "b"], tmp_path / "out", **BENCH, model=models["identity"])
    assert not (tmp_path / "out").exists()


def test_output_equal_to_an_input_is_an_error(data_dir, models, tmp_path):
    shutil.copy(data_dir / "irac_ch1_flight.fits", tmp_path / "img.fits")
    shutil.copy(data_dir / "irac_ch2_flight.fits", tmp_path / "img_deblur.fits")
    with pytest.raises(InputError, match="is one of the inputs"):
        deblur_batch([tmp_path], tmp_path, **BENCH, model=models["identity"])


def test_missing_input_or_psf_file_is_one_red_line_exit_2(models, tmp_path):
    runner = CliRunner(env={"COLUMNS": "200"})
    run = runner.invoke(cli, ["deblur", *BENCH_FLAGS, str(tmp_path / "nope.fits"), "-o", str(tmp_path), "--model", str(models["identity"])])
    assert run.exit_code == 2 and "nope.fits: file not found" in run.output
    with pytest.raises(InputError, match="kernel.fits: PSF file not found"):
        deblur_batch([models["identity"]], tmp_path, model=models["identity"], target_fwhm=0, ignore_psf_check=True, psf=PSF(shape="file", path="kernel.fits"))


def test_inputs_expand_from_dirs_and_globs_and_missing_ones_are_errors(batch_dir, tmp_path):
    names = [p.name for p in expand_inputs([batch_dir, str(batch_dir / "m*.fits"), batch_dir / "irac.fits"])]
    assert names == ["broken.fits", "download.fits", "irac.fits", "m51.fits"]
    assert output_path("x/m51.fits.gz", "o", compress=True).as_posix() == "o/m51_deblur.fits.fz"
    assert output_path("x/m51.fz", "o").as_posix() == "o/m51_deblur.fits"
    with pytest.raises(InputError, match="file not found"):
        expand_inputs([tmp_path / "nope.fits"])
    with pytest.raises(InputError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.fz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .fits"):
        expand_inputs([tmp_path / "empty"])


def test_batch_api_lives_in_batch_and_deblur_does_not_import_it():
    import sys

    import astrosr.batch
    import astrosr.deblur

    assert astrosr.batch.deblur_batch is deblur_batch and astrosr.batch.expand_inputs is expand_inputs
    assert not hasattr(astrosr.deblur, "deblur_batch") and not hasattr(astrosr.deblur, "expand_inputs")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        astrosr.deblur.nope  # noqa: B018
    code = "import sys, astrosr.deblur; print('astrosr.batch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_parallel_options_are_checked(batch_dir, models, tmp_path, monkeypatch):
    common = {**BENCH, "model": models["identity"]}
    with pytest.raises(ConfigError, match="exclude each other"):
        deblur_batch([batch_dir], tmp_path, scheduler="tcp://127.0.0.1:1", dask_local=2, **common)
    with pytest.raises(ConfigError, match="workers is for local processes"):
        deblur_batch([batch_dir], tmp_path, workers=2, dask_local=2, **common)
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)
    with pytest.raises(ConfigError, match="pip install 'astrosr\\[distributed\\]'"):
        deblur_batch([batch_dir / "irac.fits"], tmp_path, dask_local=1, **common)


def test_local_processes_and_dask_give_the_serial_bytes(data_dir, models, tmp_path):
    distributed = pytest.importorskip("distributed")
    inputs = [
        _crop(data_dir / "gc_2mass_k.fits", tmp_path / "k.fits", slice(0, 200), slice(0, 260)),
        _crop(data_dir / "gc_bolocam_gps.fits", tmp_path / "b.fits", slice(200, 400), slice(0, 300)),
    ]
    common = {**BENCH, "model": models["trained"], "samples": 2, "device": "cpu"}
    serial = deblur_batch(inputs, tmp_path / "serial", **common)
    pool = deblur_batch(inputs, tmp_path / "pool", workers=2, **common)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = deblur_batch(inputs, tmp_path / "dask", scheduler=cluster.scheduler_address, **common)
    cli_args = ["deblur", *BENCH_FLAGS, *map(str, inputs), "-o", str(tmp_path / "cli"), "--dask-local", "2", "--samples", "2"]
    run = CliRunner().invoke(cli, cli_args + ["--model", str(models["trained"]), "--device", "cpu"])
    assert run.exit_code == 0, run.output
    assert [r.status for r in serial + pool + dask] == ["done"] * 6
    for a, b, c in zip(serial, pool, dask):
        d = tmp_path / "cli" / Path(a.output).name
        for ext in (0, "MASK", "UNCERT"):
            for other in (b.output, c.output, d):
                assert np.array_equal(_data_bits(a.output, ext), _data_bits(other, ext))


def _cube_with_sky(data_dir, path):
    """Three planes of a 160x150 corner of gc_2mass_j, with its celestial WCS plus a spectral axis."""
    with fits.open(data_dir / "gc_2mass_j.fits") as hdul:
        plane = hdul[0].data[:160, :150].astype(np.float32)
        celestial = WCS(hdul[0].header).celestial[:160, :150]
    header = celestial.to_header()
    header.update({"WCSAXES": 3, "CTYPE3": "FREQ", "CRVAL3": 1.4e9, "CRPIX3": 1.0, "CDELT3": 1e6, "CUNIT3": "Hz"})
    fits.writeto(path, np.stack([plane, 2 * plane, 3 * plane]), header)
    return plane, celestial


def test_plane_of_a_cube_is_deblurred_with_a_2d_wcs(data_dir, models, tmp_path):
    plane, celestial = _cube_with_sky(data_dir, tmp_path / "cube.fits")
    result = CliRunner().invoke(cli, ["deblur", *BENCH_FLAGS, str(tmp_path / "cube.fits"), "-o", str(tmp_path / "out"), "--model",
                                      str(models["identity"]), "--no-consistency", "--plane", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with fits.open(tmp_path / "out" / "cube_p1_deblur.fits") as hdul:  # the plane is part of the name
        data, header = hdul[0].data, hdul[0].header
    np.testing.assert_allclose(data, 2 * plane, rtol=0, atol=1e-5 * np.abs(plane).max() * 2)
    assert "CTYPE3" not in header and header.get("WCSAXES", 2) == 2
    ys, xs = np.mgrid[0:160:31, 0:150:29]
    assert np.abs(WCS(header).pixel_to_world(xs, ys).separation(celestial.pixel_to_world(xs, ys)).arcsec).max() < 1e-6


def test_cube_without_plane_fails_naming_the_option_and_hdu_picks_an_extension(data_dir, models, tmp_path):
    _cube_with_sky(data_dir, tmp_path / "cube.fits")
    result = CliRunner().invoke(cli, ["deblur", *BENCH_FLAGS, str(tmp_path / "cube.fits"), "-o", str(tmp_path / "out"), "--model",
                                      str(models["identity"]), "--device", "cpu"])
    assert result.exit_code == 2 and "--plane" in result.output  # one bad input: one line, exit 2
    image = np.random.default_rng(5).normal(10, 1, (64, 64)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(image), fits.ImageHDU(2 * image, name="SCI")]).writeto(tmp_path / "mef.fits")
    out = deblur_file(tmp_path / "mef.fits", tmp_path / "out", **BENCH, model=models["identity"], consistency=False,
                      device="cpu", hdu="SCI").output
    np.testing.assert_allclose(fits.getdata(out), 2 * image, atol=1e-4)


# --- bad options and inputs: one line, exit 2, before any work, nothing written, inputs untouched ------------


def _bad_inputs(tmp_path, data_dir):
    galaxy = tmp_path / "galaxy.fits"
    shutil.copy(data_dir / "M51.fits", galaxy)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes((data_dir / "irac_ch1_flight.fits").read_bytes()[:5000])
    offset = tmp_path / "offset.fits"
    kernel = np.zeros((31, 31))
    kernel[2:9, 2:9] = PSF(fwhm=2.0).kernel()[17:24, 17:24]
    fits.writeto(offset, kernel)
    nan = tmp_path / "nan.fits"
    bad = PSF(fwhm=3.0).kernel()
    bad[0, 0] = np.nan
    fits.writeto(nan, bad)
    return {
        "device-cuda": (["--device", "cuda"], "--device: 'cuda' asked for but CUDA is not available"),
        "device-foo": (["--device", "foo"], "--device: expected auto, cpu, cuda, cuda:N or mps, got 'foo'"),
        "fwhm-zero": (["--psf-fwhm", "0"], "--psf-fwhm: expected 0 < lo <= hi, got 0"),
        "fwhm-negative": (["--psf-fwhm", "-3"], "--psf-fwhm: expected 0 < lo <= hi, got -3"),
        "fwhm-range": (["--psf-fwhm", "2:4"], "a range; an image has one PSF"),
        "psf-galaxy": (["--psf", str(galaxy)], "galaxy.fits: PSF peak at pixel"),
        "psf-truncated": (["--psf", str(truncated)], "truncated.fits: not a readable FITS file"),
        "psf-offset": (["--psf", str(offset)], "offset.fits: PSF peak at pixel (5, 5)"),
        "psf-nan": (["--psf", str(nan)], "nan.fits: PSF has 1 NaN or infinite pixels"),
        "psf-missing": (["--psf", str(tmp_path / "none.fits")], "none.fits: PSF file not found"),
        "beta-for-gaussian": (["--psf-shape", "gaussian", "--psf-beta", "2"], "--psf-beta: not used by --psf-shape gaussian"),
        "workers-and-dask": (["--workers", "2", "--dask-local", "2"], "--workers is for local processes"),
    }


@pytest.mark.parametrize("case", ["device-cuda", "device-foo", "fwhm-zero", "fwhm-negative", "fwhm-range", "psf-galaxy",
                                  "psf-truncated", "psf-offset", "psf-nan", "psf-missing", "beta-for-gaussian",
                                  "workers-and-dask"])
def test_bad_options_are_one_line_exit_2_before_any_work(data_dir, models, tmp_path, case):
    if case == "device-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, message = _bad_inputs(tmp_path, data_dir)[case]
    src = tmp_path / "in.fits"
    shutil.copy(data_dir / "synth.fits", src)
    before = sha256_file(src)
    result = CliRunner().invoke(cli, ["deblur", str(src), "-o", str(tmp_path / "out"), "--model", str(models["identity"]),
                                      *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists() and sha256_file(src) == before


def test_a_directory_where_the_output_goes(data_dir, models, tmp_path):
    src = tmp_path / "in.fits"
    shutil.copy(data_dir / "synth.fits", src)
    (tmp_path / "out" / "in_deblur.fits").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(cli, ["deblur", *BENCH_FLAGS, str(src), "-o", str(tmp_path / "out"), "--model",
                                          str(models["identity"]), "--device", "cpu", *extra])
        assert result.exit_code == 2 and "a directory stands where the output file goes" in result.stderr, result.output
    assert (tmp_path / "out" / "in_deblur.fits").is_dir()


def test_one_bad_input_is_one_line_a_batch_keeps_its_table(data_dir, models, tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_text("not a FITS file\n" * 20)
    good = tmp_path / "good.fits"
    shutil.copy(data_dir / "synth.fits", good)
    common = [*BENCH_FLAGS, "--model", str(models["identity"]), "--device", "cpu"]
    one = CliRunner().invoke(cli, ["deblur", str(bad), "-o", str(tmp_path / "o1"), *common])
    assert one.exit_code == 2 and one.stderr.strip().startswith(f"error: {bad}: not a readable FITS file"), one.output
    assert len(one.stderr.strip().splitlines()) == 1 and one.stdout == ""
    both = CliRunner().invoke(cli, ["deblur", str(bad), str(good), "-o", str(tmp_path / "o2"), *common])
    assert both.exit_code == 1 and "1 done, 0 skipped, 1 failed" in both.output


def test_a_kernel_that_states_its_pixel_scale_is_resampled_to_the_image(data_dir, models, tmp_path):
    """The IRAC PRF is 4x oversampled (SECPIX = 0.30525): used as is it would be a PSF 4x too wide."""
    prf = data_dir / "irac_ch1_flight.fits"
    sdss = data_dir / "reprojected_sdss_i.fits"  # 1.1877 arcsec/px from its WCS
    result = deblur_file(sdss, tmp_path / "a", model=models["identity"], target_fwhm=0, ignore_psf_check=True,
                         psf=PSF(shape="file", path=str(prf)), device="cpu", consistency=False)
    card = fits.getheader(result.output)["ASRPSF"]
    assert "resampled 0.30525->1.18769 arcsec/px;" in card, card
    with pytest.raises(InputError, match=r"synth\.fits: no celestial WCS to resample the PSF to"):
        deblur_file(data_dir / "synth.fits", tmp_path / "b", model=models["identity"], target_fwhm=0,
                    psf=PSF(shape="file", path=str(prf)), device="cpu")
    given = deblur_file(data_dir / "synth.fits", tmp_path / "c", model=models["identity"], device="cpu", target_fwhm=0,
                        psf=PSF(shape="file", path=str(prf), image_pixscale=1.2))
    assert "resampled 0.30525->1.2 arcsec/px;" in fits.getheader(given.output)["ASRPSF"]


def test_hdus_and_planes_of_one_file_get_their_own_outputs(models, tmp_path):
    image = np.random.default_rng(6).normal(10, 1, (64, 64)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="SCI1"), fits.ImageHDU(3 * image, name="SCI2")]
                 ).writeto(tmp_path / "mef.fits")
    common = dict(BENCH, model=models["identity"], consistency=False, device="cpu")
    one = deblur_file(tmp_path / "mef.fits", tmp_path / "out", hdu="SCI1", **common)
    two = deblur_file(tmp_path / "mef.fits", tmp_path / "out", hdu="SCI2", **common)
    assert (one.status, two.status) == ("done", "done") and Path(one.output).name == "mef_SCI1_deblur.fits"
    np.testing.assert_allclose(fits.getdata(two.output), 3 * image, atol=1e-4)  # SCI2's own data, not SCI1's
    assert Path(deblur_file(tmp_path / "mef.fits", tmp_path / "out", hdu=2, **common).output).name == "mef_hdu2_deblur.fits"


def test_an_astrosr_output_is_not_deblurred_again_unless_allowed(data_dir, models, tmp_path):
    src = tmp_path / "in.fits"
    shutil.copy(data_dir / "synth.fits", src)
    common = [*BENCH_FLAGS, "--model", str(models["identity"]), "--device", "cpu", "--no-consistency"]
    assert CliRunner().invoke(cli, ["deblur", str(src), "-o", str(tmp_path), *common]).exit_code == 0
    again = CliRunner().invoke(cli, ["deblur", str(tmp_path), "-o", str(tmp_path / "twice"), *common])
    assert again.exit_code == 1 and "already an astrosr output" in again.output and "--allow-astrosr-input" in again.output
    allowed = CliRunner().invoke(cli, ["deblur", *BENCH_FLAGS, str(tmp_path / "in_deblur.fits"), "-o", str(tmp_path / "twice"),
                                       "--allow-astrosr-input", *common])
    assert allowed.exit_code == 0 and (tmp_path / "twice" / "in_deblur_deblur.fits").is_file()


def _children(pid):
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_end_when_the_batch_process_is_killed(data_dir, models, tmp_path):
    import signal
    import time

    for i in range(6):
        _crop(data_dir / "M13_blue_0001.fits", tmp_path / f"f{i}.fits", slice(0, 1024), slice(0, 1024))
    parent = subprocess.Popen([shutil.which("astrosr") or "astrosr", "deblur", str(tmp_path), "-o", str(tmp_path / "out"),
                               "--workers", "2", "--model", str(models["trained"]), "--device", "cpu", "--samples", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = [p for p in _children(parent.pid) if "spawn" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert len(workers) >= 2, "the batch never started its workers"
    helpers = _children(parent.pid)  # the workers and multiprocessing's resource tracker
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in helpers):
        time.sleep(0.25)
    assert not [p for p in helpers if _alive(p)], "orphaned workers outlived their batch by 10 s"


def test_a_header_that_breaks_the_standard_is_fixed_and_said_once(data_dir, models, tmp_path):
    image = fits.getdata(data_dir / "synth.fits").astype(np.float32)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"], header["CRPIX1"], header["CRPIX2"] = 10.0, 20.0, 256.0, 256.0
    header["CD1_1"], header["CD2_2"] = -7.2e-05, 7.2e-05
    header["SATURATE"], header["IRAF-MAX"], header["OBJECT"] = 60000.0, 4.2e4, "synth"
    raw = tmp_path / "iraf.fits"
    fits.PrimaryHDU(image, header=header).writeto(raw)
    # an IRAF/NOAO header: the comment run into the value (astropy itself would never write this)
    data = raw.read_bytes()
    for key, value in (("CD1_1", "-7.2E-05"), ("CD2_2", "7.2E-05")):
        start = data.index(key.ljust(8).encode() + b"= ")
        data = data[:start] + f"{key:<8}= {value} Degrees/pixel".ljust(80).encode() + data[start + 80:]
    raw.write_bytes(data)
    result = CliRunner().invoke(cli, ["deblur", *BENCH_FLAGS, str(raw), "-o", str(tmp_path / "out"), "--model", str(models["identity"]),
                                      "--device", "cpu", "--no-consistency"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "header card" in line]
    assert len(warnings) == 1 and "fixed 2 header card(s) that broke the FITS standard (CD1_1, CD2_2)" in warnings[0]
    out = fits.getheader(tmp_path / "out" / "iraf_deblur.fits")
    assert out["CD1_1"] == -7.2e-05 and out["CD2_2"] == 7.2e-05 and out["OBJECT"] == "synth"
    assert "SATURATE" not in out and "IRAF-MAX" not in out  # the detector's levels do not describe the restoration
    with fits.open(tmp_path / "out" / "iraf_deblur.fits") as hdul:
        hdul.verify("exception")


@pytest.mark.parametrize("compress", [False, True])
def test_with_source_date_epoch_two_runs_write_the_same_bytes(data_dir, models, tmp_path, monkeypatch, compress):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    common = dict(BENCH, model=models["identity"], device="cpu", consistency=False, compress=compress)
    first = deblur_file(data_dir / "synth.fits", tmp_path / "a", **common).output
    clock = time.time
    monkeypatch.setattr(time, "time", lambda: clock() + 1000.0)  # the second run an hour later, as far as any clock says
    second = deblur_file(data_dir / "synth.fits", tmp_path / "b", **common).output
    assert Path(first).read_bytes() == Path(second).read_bytes()
    assert fits.getheader(first, int(compress))["ASRDATE"] == "2023-11-14T22:13:20"
    with fits.open(first, disable_image_compression=True) as hdul:  # a .fz's checksums sit on its binary tables
        assert all(hdu.header.comments["CHECKSUM"].endswith("2023-11-14T22:13:20") for hdu in hdul)


def test_a_deblur_killed_mid_write_leaves_nothing_a_rerun_does_not_remove(tmp_path, data_dir):
    # the write of a FITS file lasts milliseconds: a child whose disk is slow (its writer stalls after the first
    # bytes) gives kill -9 a write to land in; the rerun is the real command
    out = tmp_path / "out"
    args = ["deblur", str(data_dir / "synth.fits"), "-o", str(out), "--psf-fwhm", "3"]
    slow_disk = ("import sys, time\nfrom astropy.io import fits\n"
                 "def stall(self, path, **keys):\n    open(path, 'wb').write(b'SIMPLE  =                    T')\n"
                 "    time.sleep(120)\n"
                 "fits.HDUList.writeto = stall\nfrom astrosr.cli import main\nsys.argv = ['astrosr', *sys.argv[1:]]\nmain()\n")
    child = subprocess.Popen([sys.executable, "-c", slow_disk, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".synth_deblur.fits.astrosr-*.tmp")):
        time.sleep(0.05)
    child.kill()  # kill -9: no handler runs, the half-written temporary stays
    child.wait()
    stale = list(out.glob(".synth_deblur.fits.astrosr-*.tmp"))
    assert len(stale) == 1 and f"-{child.pid}.tmp" in stale[0].name and not (out / "synth_deblur.fits").exists()
    rerun = CliRunner().invoke(cli, args)
    assert rerun.exit_code == 0, rerun.output
    assert [p.name for p in out.iterdir()] == ["synth_deblur.fits"]
    with fits.open(out / "synth_deblur.fits", checksum=True) as hdul:
        hdul.verify("exception")
