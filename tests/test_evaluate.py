"""``astrosr evaluate``: bench-v1 section 8 reproduced, the identity model, every output file, errors."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from astrosr.checkpoint import save_checkpoint
from astrosr.cli import cli
from astrosr.psf import PSF
from astrosr.evaluate import evaluate
from astrosr.scoring import baseline_choice
from astrosr.manifest import load_manifest
from astrosr.models import build_model

MANIFEST = "data_manifests/bench_v1.yaml"

# BENCHMARK.md section 8: (tiles, SSIM, MSE, PSNR, flux err, sources, spurious)
SECTION_8 = {
    ("val", "BLU"): (95, "0.2057", "2.027e-02", "18.64", "0.102", 153, 2),
    ("val", "RL n=20"): (95, "0.2458", "1.802e-02", "19.21", "0.054", 153, 3),
    ("val", "Wiener b=0.1"): (95, "0.2430", "1.502e-02", "19.52", "0.103", 153, 2),
    ("other_sky", "BLU"): (91, "0.5673", "2.223e-03", "27.02", "0.076", 922, 2),
    ("other_sky", "RL n=20"): (91, "0.6337", "1.895e-03", "27.73", "0.055", 922, 22),
    ("other_sky", "Wiener b=0.1"): (91, "0.6482", "2.007e-03", "27.77", "0.079", 922, 4),
    ("synth", "BLU"): (16, "0.9951", "5.645e-06", "54.07", "0.124", 1, 0),
    ("synth", "RL n=20"): (16, "0.9950", "2.806e-06", "55.53", "0.007", 1, 0),
    ("synth", "Wiener b=0.1"): (16, "0.9975", "1.767e-06", "58.46", "0.021", 1, 0),
}


@pytest.fixture(scope="module")
def bench(data_dir, tmp_path_factory):
    """One evaluate run over val, other_sky and simulated (no model), shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASTROSR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        summary = evaluate(out=out, fields=["val", "other_sky", "simulated"], manifest=MANIFEST, data_dir=data_dir,
                           panels=1, models=[])
    return out, summary


@pytest.mark.parametrize("key", list(SECTION_8))
def test_section_8_is_reproduced_to_its_printed_digits(bench, key):
    _, summary = bench
    where, method = key
    row = summary["images"]["synth"]["methods"][method] if where == "synth" else summary["fields"][where][method]
    tiles, ssim, mse, psnr, flux, sources, spurious = SECTION_8[key]
    got = (row["n_tiles"], f"{row['ssim']:.4f}", f"{row['mse']:.3e}", f"{row['psnr']:.2f}", f"{row['flux_err']:.3f}",
           row["n_sources"], row["n_spurious"])
    assert got == (tiles, ssim, mse, psnr, flux, sources, spurious)
    assert row["spurious_frac"] == pytest.approx(spurious / sources)


def test_val_chooses_the_reference_parameters_and_caches_them(bench, data_dir):
    out, summary = bench
    choice = summary["baselines"]
    assert (choice["rl_iters"], choice["wiener_balance"], choice["source"]) == (20, 0.1, "val")
    assert set(choice["rl_ssim"]) == {"5", "10", "20", "30", "50"} and len(choice["wiener_ssim"]) == 7
    psf = PSF()
    again = baseline_choice(load_manifest(MANIFEST), data_dir, psf, psf.kernel(), out=out)
    assert again["cached"] and again["rl_iters"] == 20


def test_simulated_field_is_synth_plus_four_seed_1000_images(bench):
    _, summary = bench
    images = summary["fields"]["simulated"]["BLU"]["images"]
    assert images[0] == "synth" and sorted(images[1:]) == [f"sim_s1000_{i:03d}" for i in range(4)]


def test_metrics_csv_holds_every_tile_of_every_method(bench):
    out, summary = bench
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_tiles = sum(summary["fields"][fld]["BLU"]["n_tiles"] for fld in summary["fields"])
    assert len(rows) == n_tiles * len(summary["methods"])
    other = [float(r["ssim"]) for r in rows if r["field"] == "other_sky" and r["method"] == "BLU"]
    assert np.mean(other) == pytest.approx(summary["fields"]["other_sky"]["BLU"]["ssim"], rel=1e-12)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resvae", {"width": 8, "levels": 2})
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, {"model": "resvae", "model_config": model.config, "state_dict": model.state_dict(),
                           "psf": PSF().to_dict()})
    return path


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_untrained_resvae_without_consistency_equals_blu(data_dir, tiny_model, tmp_path):
    result = _cli("evaluate", "--images", data_dir / "synth.fits", data_dir / "M51.fits", "--model", tiny_model,
                  "--no-consistency", "--panels", "0", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["methods"] == ["BLU", "SR tiny (no DC)", "RL n=20", "Wiener b=0.1"]
    assert summary["baselines"]["source"] == "default"
    assert "val images not part of the run" in summary["baselines"]["note"]
    for group in [summary["fields"]["images"]] + [img["methods"] for img in summary["images"].values()]:
        blu, sr = group["BLU"], group["SR tiny (no DC)"]
        for key in ("ssim", "mse", "psnr", "flux_err"):
            assert sr[key] == pytest.approx(blu[key], rel=1e-5), key
        for key in ("n_tiles", "n_sources", "n_spurious"):
            assert sr[key] == blu[key], key


def test_cli_run_writes_every_output_with_provenance(data_dir, tiny_model, tmp_path):
    result = _cli("evaluate", "--images", data_dir / "synth.fits", "--model", tiny_model, "--psf-fwhm", "3",
                  "--threads", "1", "--panels", "2", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "bench-v1 per field" in result.output and "SR tiny" in result.output
    # a pipe or log file (not a terminal) gets the whole table, not 80 columns of '…' cells
    assert "flux err (n)" in result.output and "SR tiny (no DC)" in result.output and "Wiener b=0.1" in result.output
    for name in ["report.md", "metrics.csv", "summary.json", "ssim_by_field.png", "panels/synth.png"]:
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "panels/synth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= {"schema", "methods", "fields", "images", "baselines", "provenance", "files"}
    assert summary["methods"] == ["BLU", "SR tiny", "SR tiny (no DC)", "RL n=20", "Wiener b=0.1"]
    row_keys = {"n_images", "n_tiles", "ssim", "mse", "psnr", "flux_err", "n_sources", "n_spurious", "spurious_frac",
                "s_per_mpix"}
    for method in summary["methods"]:
        assert set(summary["fields"]["images"][method]) >= row_keys
        assert set(summary["images"]["synth"]["methods"][method]) >= row_keys
        assert (summary["fields"]["images"][method]["s_per_mpix"] is None) == (method == "BLU")
    image = summary["images"]["synth"]
    assert set(image) >= {"field", "path", "sha256", "shape", "lo", "hi", "bg_median", "bg_std", "n_sources"}
    prov = summary["provenance"]
    assert set(prov) >= {"date", "versions", "hardware", "manifest", "models", "psf", "degradation", "options"}
    assert set(prov["versions"]) >= {"astrosr", "torch", "astropy", "photutils", "skimage"}
    assert set(prov["hardware"]) >= {"cpu", "gpu", "threads", "device"} and prov["hardware"]["threads"] == 1
    model = prov["models"][0]
    assert len(model["sha256"]) == 64 and model["model"] == "resvae" and model["model_config"]["width"] == 8
    assert prov["psf"]["fwhm"] == 3.0
    # the with-step row is exactly what restore_image(consistency=True) (= deblur) outputs
    from astrosr import metrics
    from astrosr.checkpoint import load_model
    from astrosr.degrade import degrade
    from astrosr.fits_io import read_image
    from astrosr.restore import restore_image

    ori = read_image(data_dir / "synth.fits").data
    ref = metrics.reference(ori)
    kernel = PSF(fwhm=3.0).kernel()
    blu = degrade(ori, kernel, noise_std=ref.std, rng=np.random.default_rng(0))
    sr = restore_image(blu, load_model(tiny_model)[0], psf_kernel=kernel, psf_fwhm=3.0, consistency=True).sr
    direct = metrics.score(ref, sr).summary()
    got = summary["images"]["synth"]["methods"]["SR tiny"]
    assert got["ssim"] == pytest.approx(direct.ssim, rel=1e-12)
    assert got["mse"] == pytest.approx(direct.mse, rel=1e-12)
    assert got["flux_err"] == pytest.approx(direct.flux_err, rel=1e-12)
    report = (tmp_path / "report.md").read_text()
    assert "| synth | images | SR tiny |" in report and "Moffat FWHM=3px" in report
    assert "n = 20, Wiener b = 0.1" in report


def test_psf_option_sets_the_degradation(data_dir, tmp_path):
    from astrosr import metrics
    from astrosr.degrade import degrade
    from astrosr.psf import moffat_psf
    from astrosr.fits_io import read_image

    summary = evaluate(out=tmp_path, images=[data_dir / "M51.fits"], psf=PSF(fwhm=5.0), panels=0, models=[])
    ori = read_image(data_dir / "M51.fits").data
    ref = metrics.reference(ori)
    blu = degrade(ori, moffat_psf(5.0), noise_std=ref.std, rng=np.random.default_rng(0))
    expected = metrics.score(ref, blu).summary()
    assert summary["fields"]["images"]["BLU"]["ssim"] == expected.ssim


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "nope.fits"], "nope.fits: image file not found"),
        (["--images", "{synth}", "--model", "missing.pt"], "missing.pt: model file not found"),
        (["--field", "val", "--manifest", "{bad}"], "bad.yaml: bogus: unknown key"),
        (["--field", "val", "--manifest", "absent.yaml"], "absent.yaml"),
        (["--field", "val", "--images", "{synth}"], "exactly one of them"),
        ([], "exactly one of them"),
        (["--images", "{synth}", "--psf", "nopsf.fits"], "nopsf.fits: PSF file not found, nor a PSF named in"),
        # a file PSF once silently ignored --psf-fwhm, scoring with another PSF than asked
        (["--images", "{synth}", "--psf", "{psf}", "--psf-fwhm", "3"], "--psf-fwhm: not used with --psf"),
        (["--images", "{synth}", "--psf-shape", "airy"], "psf shape 'airy' needs a radius (--psf-radius R)"),
        # a Gaussian has no beta, an Airy disc no FWHM option: ignoring them would use another PSF
        (["--images", "{synth}", "--psf-shape", "gaussian", "--psf-beta", "2.5"], "--psf-beta: not used by --psf-shape gaussian"),
        (["--images", "{synth}", "--psf-shape", "airy", "--psf-radius", "4", "--psf-fwhm", "3"],
         "--psf-fwhm: not used by --psf-shape airy"),
    ],
)
def test_cli_errors_are_one_line_exit_2(data_dir, tmp_path, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbogus: 1\n")
    args = [a.format(synth=data_dir / "synth.fits", bad=bad, psf=data_dir / "irac_ch1_flight.fits") for a in args]
    result = CliRunner().invoke(cli, ["evaluate", *args, "--data-dir", str(data_dir), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_exact_match_row_reads_inf_in_markdown_and_null_in_json(data_dir):
    from astrosr import metrics
    from astrosr.evaluate_report import format_row
    from astrosr.fits_io import read_image

    ori = read_image(data_dir / "synth.fits").data
    row = metrics.score(metrics.reference(ori), ori).summary().to_dict()
    assert row["psnr"] is None and json.loads(json.dumps(row))["psnr"] is None
    cells = format_row(dict(row, s_per_mpix=None))
    assert cells[:4] == ["16", "1.0000", "0.000e+00", "inf"] and cells[-1] == "-"


def test_psf_named_in_the_manifest_is_found_in_the_data_dir(data_dir, tmp_path):
    result = _cli("evaluate", "--images", data_dir / "synth.fits", "--psf", "irac_ch1_flight.fits", "--data-dir",
                  data_dir, "--panels", "0", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    prov = json.loads((tmp_path / "summary.json").read_text())["provenance"]
    assert prov["psf"]["path"] == str(data_dir / "irac_ch1_flight.fits") and prov["psf"]["fwhm_px"] > 4
    assert prov["manifest"]["name"] == "bench-v1"


def test_failed_run_leaves_no_empty_output_directory(tmp_path):
    cube = tmp_path / "cube.fits"
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((3, 130, 130), "f4")).writeto(cube)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", "--images", str(cube), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "cube.fits" in result.stderr and result.stdout == ""  # no blank progress line either
    assert not out.exists()


def test_output_under_a_file_is_one_line_exit_2(data_dir, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = CliRunner().invoke(cli, ["evaluate", "--images", str(data_dir / "gc_msx_e.fits"),
                                      "-o", str(blocker / "report")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0] and "directory" in lines[0], result.output


def test_airy_psf_radius_option_reaches_the_degradation(data_dir, tmp_path):
    # the airy error asked for --psf-radius, which evaluate and deblur did not have
    result = CliRunner().invoke(cli, ["evaluate", "--images", str(data_dir / "gc_msx_e.fits"), "--psf-shape", "airy",
                                      "--psf-radius", "3", "--panels", "0", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    psf = json.loads((tmp_path / "summary.json").read_text())["provenance"]["psf"]
    assert (psf["shape"], psf["radius"]) == ("airy", 3.0)


# --- --samples: calibration of the uncertainty map ---------------------------------------------


@pytest.fixture(scope="module")
def spread_model(tmp_path_factory):
    """A tiny resvae whose last layer is not zero, so its posterior draws differ (sigma > 0)."""
    torch.manual_seed(0)
    model = build_model("resvae", {"width": 8, "levels": 2})
    with torch.no_grad():
        model.tail.weight.normal_(0.0, 0.05)
    path = tmp_path_factory.mktemp("spread") / "spread.pt"
    save_checkpoint(path, {"model": "resvae", "model_config": model.config, "state_dict": model.state_dict(),
                           "psf": PSF().to_dict()})
    return path


def _coverage(ref, image, sigma):
    """Independent figures: slice every scored 128 tile by hand; z with ORI's own noise; source pixels."""
    z, src = [], []
    for y, x in ref.origins:
        win = (slice(y, y + 128), slice(x, x + 128))
        ori = ref.ori[win]
        z.append(np.abs(image[win].astype(np.float64) - ori) / np.sqrt(sigma[win].astype(np.float64) ** 2 + ref.std**2))
        src.append(ori - ref.median > 5 * ref.std)
    z, src = np.concatenate([a.ravel() for a in z]), np.concatenate([a.ravel() for a in src])
    return z, src


def test_samples_report_coverage_of_source_pixels_with_the_draws_of_each_path(data_dir, spread_model, tmp_path):
    from astrosr import metrics
    from astrosr.checkpoint import load_model
    from astrosr.degrade import degrade
    from astrosr.fits_io import read_image
    from astrosr.restore import restore_image
    from astrosr.scoring import SAMPLE_SEED

    names = ["synth", "gc_msx_e"]
    result = _cli("evaluate", "--images", *[data_dir / f"{n}.fits" for n in names], "--model", spread_model,
                  "--samples", "3", "--panels", "0", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "z<=1" in result.output and "3 draws" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["provenance"]["options"]["samples"] == 3
    model = load_model(spread_model)[0]
    kernel = PSF().kernel()
    pooled = {"SR spread": [], "SR spread (no DC)": []}
    for name in names:
        ori = read_image(data_dir / f"{name}.fits").data
        ref = metrics.reference(ori)
        blu = degrade(ori, kernel, noise_std=ref.std, rng=np.random.default_rng(0))
        rows = summary["images"][name]["methods"]
        sigmas = {}
        for method, step in [("SR spread", True), ("SR spread (no DC)", False)]:
            torch.manual_seed(SAMPLE_SEED)
            restored = restore_image(blu, model, psf_kernel=kernel, psf_fwhm=4.0, consistency=step, samples=3)
            assert np.nanmax(restored.uncert) > 0
            sigmas[method] = restored.uncert
            z, src = _coverage(ref, restored.sr, restored.uncert)
            u = rows[method]["uncertainty"]
            assert u["pixels"] == z.size == len(ref.origins) * 128 * 128
            assert u["source_pixels"] == int(src.sum()) > 0
            assert u["within_1_all"] == pytest.approx(np.mean(z <= 1), abs=1e-9)
            assert u["within_2_all"] == pytest.approx(np.mean(z <= 2), abs=1e-9)
            assert u["within_1"] == pytest.approx(np.mean(z[src] <= 1), abs=1e-9)
            pooled[method].append((z, src))
        # each row's sigma is the spread of its own path: draws through the step differ from the network's
        assert not np.allclose(sigmas["SR spread"], sigmas["SR spread (no DC)"])
        # sampling changes no score: the no-samples restoration scores the same
        direct = metrics.score(ref, restore_image(blu, model, psf_kernel=kernel, psf_fwhm=4.0).sr).summary()
        assert rows["SR spread"]["ssim"] == pytest.approx(direct.ssim, rel=1e-12)
        for method in ("BLU", "RL n=20", "Wiener b=0.1"):
            assert rows[method]["uncertainty"] is None
        # the trusted-source counts judge the row's own detections: all of them are the section-5 count
        trust = rows["SR spread"]["trust"]
        assert trust["spurious"] == rows["SR spread"]["n_spurious"] and trust["n_sources"] == ref.n_sources
        assert trust["spurious_confident"] <= trust["spurious"] and trust["confident"] <= trust["detected"]
        from astrosr.baselines import wiener
        from scipy.spatial import cKDTree

        found = metrics.detected(ref, wiener(blu, kernel, balance=0.1))
        expected = 0 if not len(found) or not len(ref.sources) else int(
            (cKDTree(found).query(ref.sources)[0] <= 3.0).sum())
        assert rows["Wiener b=0.1"]["trust"]["complete"] == expected
    for method, parts in pooled.items():
        z = np.concatenate([p[0] for p in parts])
        src = np.concatenate([p[1] for p in parts])
        field = summary["fields"]["images"][method]["uncertainty"]
        assert field["within_1"] == pytest.approx(np.mean(z[src] <= 1), abs=1e-9)
        assert field["within_2"] == pytest.approx(np.mean(z[src] <= 2), abs=1e-9)
    report = (tmp_path / "report.md").read_text()
    assert "## Uncertainty calibration (3 posterior draws)" in report and "through the data-consistency step" in report
    u = summary["images"]["gc_msx_e"]["methods"]["SR spread"]["uncertainty"]
    assert f"| gc_msx_e (images) | SR spread | {u['source_pixels']} | {u['within_1']:.3f} |" in report
    assert "### Sources you can trust" in report and "| images | SR spread |" in report
    assert "reliability.png" in summary["files"] and (tmp_path / "reliability.png").stat().st_size > 0


def test_without_samples_nothing_is_added(data_dir, spread_model, tmp_path):
    result = _cli("evaluate", "--images", data_dir / "gc_msx_e.fits", "--model", spread_model, "--panels", "0",
                  "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "z<=1" not in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["provenance"]["options"]["samples"] == 0
    for row in summary["images"]["gc_msx_e"]["methods"].values():
        assert row["uncertainty"] is None
    assert "calibration" not in (tmp_path / "report.md").read_text().lower()
    assert not (tmp_path / "reliability.png").exists()


def test_negative_samples_is_a_config_error(tmp_path):
    from astrosr.errors import ConfigError

    with pytest.raises(ConfigError, match="samples: must be >= 0, got -1"):
        evaluate(out=tmp_path / "o", images=["x.fits"], samples=-1)


def test_images_as_arguments_and_a_missing_device(data_dir, tiny_model, tmp_path):
    result = _cli("evaluate", data_dir / "synth.fits", "--model", tiny_model, "--panels", "0", "-o", tmp_path / "pos")
    assert result.exit_code == 0 and "SR tiny" in result.output, result.output
    if not torch.cuda.is_available():
        result = _cli("evaluate", data_dir / "synth.fits", "--device", "cuda", "-o", tmp_path / "gpu")
        assert result.exit_code == 2 and "--device: 'cuda' asked for but CUDA is not available" in result.stderr
        assert not (tmp_path / "gpu").exists()


def test_an_image_with_no_scoreable_tile_is_an_error_and_planes_can_be_scored(data_dir, tmp_path):
    from astropy.io import fits

    holes = np.random.default_rng(2).normal(100, 5, (300, 300)).astype("f4")
    holes[::100, :] = np.nan  # a NaN row in every 128 px band: every bench-v1 tile touches one
    fits.writeto(tmp_path / "holes.fits", holes)
    result = _cli("evaluate", "--images", tmp_path / "holes.fits", "--baselines-only", "-o", tmp_path / "r1")
    assert result.exit_code == 2 and "holes.fits: no 128x128 tile of the image is free of NaN" in result.stderr
    assert not (tmp_path / "r1").exists()
    synth = fits.getdata(data_dir / "synth.fits").astype("f4")
    fits.writeto(tmp_path / "cube.fits", np.stack([np.zeros_like(synth), synth]))
    result = _cli("evaluate", "--images", tmp_path / "cube.fits", "--baselines-only", "-o", tmp_path / "r2")
    assert result.exit_code == 2 and "choose a plane (--plane=K)" in result.stderr
    result = _cli("evaluate", "--images", tmp_path / "cube.fits", "--baselines-only", "--plane", "1", "--panels", "0",
                  "-o", tmp_path / "r3")
    assert result.exit_code == 0, result.output
    direct = _cli("evaluate", "--images", data_dir / "synth.fits", "--baselines-only", "--panels", "0", "-o", tmp_path / "r4")
    assert direct.exit_code == 0
    scores = [json.loads((tmp_path / r / "summary.json").read_text())["fields"]["images"]["BLU"]["ssim"] for r in ("r3", "r4")]
    assert scores[0] == pytest.approx(scores[1], rel=1e-6)  # the plane scores as the image it holds


# BENCHMARK.md section 9 (median star FWHM, px): ORI and the classical rows
SECTION_9 = {"reprojected_sdss_i": {"ORI": 1.18, "RL n=20": 3.11, "Wiener b=0.1": 4.33},
             "M51": {"ORI": 2.62, "RL n=20": 3.80, "Wiener b=0.1": 4.74}}


@pytest.mark.parametrize("image", list(SECTION_9))
def test_star_sharpness_column_reproduces_section_9(bench, image):
    out, summary = bench
    row = summary["images"][image]
    for method, fwhm in SECTION_9[image].items():
        assert row["star_fwhm"][method] == pytest.approx(fwhm, rel=0.02), method
    assert row["resolution_stars"] == (6 if image == "M51" else 40)
    assert "## Star sharpness" in (out / "report.md").read_text()


# --- the BM3D row (peers extra) ------------------------------------------------------------------


def test_without_bm3d_the_report_says_it_was_skipped(data_dir, tmp_path):
    result = _cli("evaluate", "--images", data_dir / "gc_msx_e.fits", "--baselines-only", "--panels", "0",
                  "-o", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not any(m.startswith("BM3D") for m in summary["methods"])
    assert "BM3D skipped: the bm3d package is not installed" in (tmp_path / "report.md").read_text()


def test_the_bm3d_row_is_scored_and_its_restorations_cached(data_dir, tmp_path, monkeypatch):
    from astrosr import baselines

    calls = []

    def stand_in(image, kernel, *, noise_std, multiplier):  # the real one is tested in test_baselines
        calls.append(multiplier)
        return baselines.wiener(image, kernel, balance=0.05)

    monkeypatch.setattr(baselines, "bm3d_available", lambda: True)
    monkeypatch.setattr(baselines, "bm3d_deblur", stand_in)
    args = ["evaluate", "--images", data_dir / "gc_msx_e.fits", "--baselines-only", "--panels", "0", "-o", tmp_path]
    assert _cli(*args).exit_code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary["images"]["gc_msx_e"]["methods"]["BM3D x1"]
    assert summary["methods"][-1] == "BM3D x1" and row["ssim"] is not None and row["s_per_mpix"] is not None
    assert "non-commercial" in (tmp_path / "report.md").read_text()
    assert _cli(*args).exit_code == 0 and calls == [1.0]  # the second run reads the cache
