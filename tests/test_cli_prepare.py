"""The prepare-stage commands through click's CliRunner: simulate, fetch, prepare, info, and bad inputs."""

import gzip
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from astropy.io import fits
from click.testing import CliRunner

from astrosr.cli import cli

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "data_manifests" / "bench_v1.yaml"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_simulate_prepare_info(tmp_path):
    sims = tmp_path / "sims"
    result = run("simulate", "-o", sims, "--n", "2", "--seed", "5", "--size", "256")
    assert result.exit_code == 0, result.output
    files = sorted(sims.glob("*.fits"))
    assert [p.name for p in files] == ["sim_s5_000.fits", "sim_s5_001.fits"]
    out = tmp_path / "pairs.h5"
    result = run("prepare", *files, "-o", out, "--psf-fwhm", "3:5", "--seed", "2", "--noise", "0.5:1.5")
    assert result.exit_code == 0, result.output
    assert "8 tile pairs from 2 images" in result.output
    with h5py.File(out) as h5:
        assert h5["ori"].shape == (8, 128, 128)
        assert all(3 <= f <= 5 for f in h5["tiles"]["psf_fwhm"])
    result = run("info", out)
    assert result.exit_code == 0, result.output
    for text in ("8 pairs", "train", "sim_s5_000.fits", "fwhm 3:5", "noise 0.5:1.5"):
        assert text in result.output


def test_prepare_from_manifest_fields(tmp_path, data_dir):
    out = tmp_path / "val.h5"
    result = run("prepare", "--manifest", BENCH, "--data-dir", data_dir, "--fields", "val", "-o", out)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as h5:
        assert len(h5["tiles"]) == 95 and set(h5["tiles"]["field"]) == {b"val"}


def test_prepare_options_reach_the_config(tmp_path, data_dir):
    out = tmp_path / "o.h5"
    config = tmp_path / "prep.yaml"
    # the YAML's psf keys and the --psf-* flags merge into one PSF specification
    config.write_text(yaml.safe_dump({"prepare": {"seed": 11, "psf": {"beta": 2.5}}, "train": {"steps": 1}}))
    result = run("prepare", data_dir / "M51.fits", "-o", out, "--config", config, "--scale", "2", "--psf-shape",
                 "moffat,gaussian", "--field", "val", "--compression", "gzip", "--hdu", "0", "--tile", "64", "--stride", "32")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as h5:
        assert h5["blu"].shape[1:] == (32, 32) and h5["ori"].shape == (225, 64, 64)
        assert h5["ori"].compression == "gzip" and set(h5["tiles"]["field"]) == {b"val"}
        c = json.loads(h5.attrs["config"])
        assert (c["seed"], c["psf"]["beta"], c["psf"]["shape"], c["scale"], c["hdu"]) == (11, 2.5, "moffat,gaussian", 2, 0)


def test_prepare_psf_named_in_manifest(tmp_path, data_dir):
    out = tmp_path / "irac.h5"
    # the PRF states its own pixel scale (SECPIX, 4x oversampled): it is resampled to the images' scale
    result = run("prepare", "--manifest", BENCH, "--data-dir", data_dir, "--fields", "val", "-o", out,
                 "--psf", "irac_ch2_flight.fits", "--image-pixscale", "1.2")
    assert result.exit_code == 0, result.output
    from astrosr.psf import read_psf

    expected = read_psf(data_dir / "irac_ch2_flight.fits", image_pixscale=1.2)
    with h5py.File(out) as h5:
        assert h5["psfs"].shape == (1, *expected.shape) and expected.shape[0] < 81


def test_cube_with_plane_and_gzip(tmp_path, rng):
    cube = tmp_path / "cube.fits"
    data = rng.normal(size=(2, 130, 140))
    fits.PrimaryHDU(data).writeto(cube)
    result = run("prepare", cube, "-o", tmp_path / "c.h5", "--plane", "1")
    assert result.exit_code == 0, result.output
    gz = tmp_path / "plain.fits.gz"
    with gzip.open(gz, "wb") as f:
        fits.PrimaryHDU(data[0]).writeto(f)
    result = run("prepare", gz, "-o", tmp_path / "g.h5")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "c.h5") as h5:
        assert h5["images"]["plane"][0] == 1


def test_fetch_command(tmp_path):
    src = tmp_path / "remote"
    src.mkdir()
    fits.PrimaryHDU(np.arange(128 * 128, dtype=np.float32).reshape(128, 128)).writeto(src / "a.fits")
    sha = hashlib.sha256((src / "a.fits").read_bytes()).hexdigest()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"name": "m", "images": [
        {"file": "a.fits", "field": "train", "url": (src / "a.fits").as_uri(), "sha256": sha}]}))
    result = run("fetch", manifest, "--data-dir", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "downloaded" in result.output and (tmp_path / "data" / "a.fits").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "m", "images": [
        {"file": "b.fits", "field": "train", "url": (src / "a.fits").as_uri(), "sha256": "0" * 64}]}))
    result = run("fetch", bad, "--data-dir", tmp_path / "data")
    assert result.exit_code == 2 and "b.fits" in result.stderr and "0" * 64 in result.stderr
    assert not (tmp_path / "data" / "b.fits").exists()


def _bad_inputs(tmp_path, data_dir, rng):
    """Each case: the CLI arguments of a bad input and the name its error line must carry."""
    def fits_file(name, data):
        path = tmp_path / name
        fits.PrimaryHDU(data).writeto(path)
        return path

    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes((data_dir / "M51.fits").read_bytes()[:50_000])
    text = tmp_path / "text.fits"
    text.write_text("SIMPLE = nope\n" * 300)
    manifest = tmp_path / "gone.yaml"
    manifest.write_text(yaml.safe_dump({"name": "g", "images": [
        {"file": "gone.fits", "field": "val", "url": "http://example.org/gone.fits", "sha256": "0" * 64}]}))
    bad_config = tmp_path / "bad_config.yaml"
    bad_config.write_text("psf_fwhmm: 3\n")
    good = data_dir / "M51.fits"
    return {
        "cube": ([fits_file("cube.fits", rng.normal(size=(3, 130, 130)))], "cube.fits"),
        "small": ([fits_file("small.fits", rng.normal(size=(100, 100)))], "small.fits"),
        "all-nan": ([fits_file("allnan.fits", np.full((130, 130), np.nan))], "allnan.fits"),
        "constant": ([fits_file("const.fits", np.full((130, 130), 3.0))], "const.fits"),
        "truncated": ([good, truncated], "truncated.fits"),
        "text": ([text], "text.fits"),
        "missing": ([good, tmp_path / "missing.fits"], "missing.fits"),
        "bad-hdu": ([good, "--hdu", "4"], "M51.fits"),
        "plane-out-of-range": ([fits_file("cube2.fits", rng.normal(size=(2, 130, 130))), "--plane", "5"], "cube2.fits"),
        "manifest-missing-file": (["--manifest", manifest, "--data-dir", tmp_path], "gone.fits"),
        "psf-missing": ([good, "--psf", tmp_path / "nopsf.fits"], "nopsf.fits"),
        "bad-range": ([good, "--psf-fwhm", "6:2"], "--psf-fwhm"),
        "bad-config-key": ([good, "--config", bad_config], "psf_fwhmm"),
    }


CASES = ["cube", "small", "all-nan", "constant", "truncated", "text", "missing", "bad-hdu", "plane-out-of-range",
         "manifest-missing-file", "psf-missing", "bad-range", "bad-config-key"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_one_line_no_output(tmp_path, data_dir, rng, case):
    args, name = _bad_inputs(tmp_path, data_dir, rng)[case]
    out = tmp_path / "out" / "pairs.h5"
    inputs = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run("prepare", *args, "-o", out)
    assert all(p.read_bytes() == data for p, data in inputs.items())  # every input as it was
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no temporary left either


def test_usage_errors(tmp_path, data_dir):
    result = run("prepare", "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and "no input images: give IMAGES or --manifest" in result.stderr
    result = run("prepare", data_dir / "M51.fits", "--fields", "val", "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and "--fields needs --manifest" in result.stderr
    result = run("info", tmp_path / "none.h5")
    assert result.exit_code == 2 and "none.h5: file not found" in result.stderr
    existing = tmp_path / "exists.h5"
    existing.write_bytes(b"x")
    result = run("prepare", data_dir / "M51.fits", "-o", existing)
    assert result.exit_code == 2 and "exists.h5: output exists" in result.stderr and existing.read_bytes() == b"x"
    result = run("simulate", "-o", tmp_path / "s", "--size", "64")
    assert result.exit_code == 2  # click's own range check


def test_output_equal_to_an_input_is_refused_even_with_overwrite(tmp_path, data_dir):
    # `prepare in.fits -o in.fits --overwrite` once replaced the user's FITS file with the pairs file
    image = tmp_path / "in.fits"
    image.write_bytes((data_dir / "gc_msx_e.fits").read_bytes())
    before = image.read_bytes()
    result = run("prepare", image, "-o", image, "--overwrite")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in.fits: output is also an input" in lines[0], result.stderr
    assert image.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fits"]


@pytest.mark.parametrize("command", [["prepare", "{image}", "-o", "{blocker}/x.h5"], ["simulate", "-o", "{blocker}/sims"]])
def test_output_under_a_file_is_one_line_exit_2(tmp_path, data_dir, command):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = [a.format(image=data_dir / "gc_msx_e.fits", blocker=blocker) for a in command]
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0] and "directory" in lines[0], result.stderr
    assert "Traceback" not in result.output and blocker.read_text() == "x"


def test_psf_file_with_analytic_options_and_config_errors_name_the_option(tmp_path, data_dir):
    image, out = data_dir / "M51.fits", tmp_path / "pairs.h5"
    result = run("prepare", image, "--psf", data_dir / "irac_ch1_flight.fits", "--psf-fwhm", "3", "-o", out)
    assert result.exit_code == 2 and "--psf-fwhm: not used with --psf" in result.stderr, result.output
    result = run("prepare", image, "--psf-shape", "airy", "-o", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: psf shape 'airy' needs a radius (--psf-radius R)"  # no internal class name
    assert not out.exists()
