"""``astrosr run``: the quickstart pipeline end to end at a reduced size, resume, and bad pipeline files."""

import json
from pathlib import Path

import h5py
import pytest
import yaml
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy import ndimage
from click.testing import CliRunner

from astrosr.cli import cli
from astrosr.psf import moffat_psf
from astrosr.errors import ConfigError
from astrosr.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "pipelines" / "quickstart.yaml"


def run(*args):
    return CliRunner().invoke(cli, ["run", *[str(a) for a in args]])


def small_quickstart(tmp_path):
    """pipelines/quickstart.yaml with 128-px images, one or two per set and a tiny model."""
    data = yaml.safe_load(QUICKSTART.read_text())
    for name, spec in data["simulate"].items():
        spec.update(size=128, n=2 if name == "train" else 1)
    data["train"]["resvae"].update(batch=2, val_every=1, model_options={"width": 4, "levels": 2})
    data["evaluate"]["panels"] = 1
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quick")
    path, data = small_quickstart(tmp)
    out = tmp / "run"
    result = run(path, "-o", out, "--max-steps", "2")
    return path, data, out, result


def test_quickstart_runs_and_writes_every_file(quick_run):
    path, data, out, result = quick_run
    assert result.exit_code == 0, result.output
    expected = ["pipeline.yaml", "stages.json", "summary.md", "summary.json", "prepare/pairs.h5",
                "train/resvae/best.pt", "train/resvae/last.pt", "train/resvae/metrics.csv", "evaluate/report.md",
                "evaluate/summary.json", "evaluate/metrics.csv", "deblur/blurred/sim_s1001_000_blu.fits",
                "deblur/sim_s1001_000_blu_deblur.fits", "deblur/sim_s1001_000_blu_deblur.png"]
    expected += [f"simulate/{name}/sim_s{spec['seed']}_{i:03d}.fits"
                 for name, spec in data["simulate"].items() for i in range(spec["n"])]
    missing = [f for f in expected if not (out / f).is_file()]
    assert not missing
    records = json.loads((out / "stages.json").read_text())["stages"]
    assert list(records) == ["simulate.train", "simulate.val", "simulate.test", "simulate.sky", "prepare",
                             "train.resvae", "evaluate", "deblur"]
    assert all(Path(p).is_file() for r in records.values() for p in r["outputs"])
    # 128-px images, 128-px tiles: one tile per image; train and val images only (never seed >= 1000)
    with h5py.File(out / "prepare" / "pairs.h5") as h5:
        fields = [f.decode() for f in h5["images"]["field"]]
        names = [Path(p.decode()).name for p in h5["images"]["path"]]
    assert fields == ["train", "train", "val"] and names == ["sim_s0_000.fits", "sim_s0_001.fits", "sim_s500_000.fits"]
    summary = json.loads((out / "evaluate" / "summary.json").read_text())
    assert {"BLU", "SR resvae/best", "SR resvae/best (no DC)"} <= set(summary["methods"])
    # the deblur input is the sky image blurred as bench-v1 does (checked against scipy directly)
    with fits.open(out / "simulate" / "sky" / "sim_s1001_000.fits") as ori, \
            fits.open(out / "deblur" / "blurred" / "sim_s1001_000_blu.fits") as blu, \
            fits.open(out / "deblur" / "sim_s1001_000_blu_deblur.fits") as sr:
        assert sr[0].data.shape == blu[0].data.shape == ori[0].data.shape == (128, 128)
        expected = ndimage.convolve(ori[0].data.astype(float), moffat_psf(4.0, beta=3.0), mode="nearest")
        residual = blu[0].data - expected
        assert abs(residual.mean()) < 0.2 * residual.std()  # zero-mean noise around the blurred truth
        assert residual.std() == pytest.approx(sigma_clipped_stats(ori[0].data, sigma=3.0)[2], rel=0.1)
    for text in ("SR resvae/best", "BLU", "stage", "deblur"):
        assert text in result.output
    run_summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in run_summary["stages"]] == ["done"] * 8


def test_rerun_skips_finished_stages_and_reruns_changed_ones(quick_run, tmp_path):
    path, data, out, _ = quick_run
    best = out / "train" / "resvae" / "best.pt"
    stamp = best.stat().st_mtime_ns
    result = run(path, "-o", out, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    statuses = {s["stage"]: s["status"] for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert set(statuses.values()) == {"skipped"}, statuses
    assert best.stat().st_mtime_ns == stamp
    # only the changed stage (deblur, the last one) runs again
    data["deblur"]["consistency"] = False
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run(changed, "-o", out, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    statuses = {s["stage"]: s["status"] for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert statuses.pop("deblur") == "done" and set(statuses.values()) == {"skipped"}
    with fits.open(out / "deblur" / "sim_s1001_000_blu_deblur.fits") as hdul:
        assert hdul[0].header["ASRCONS"] is False


def test_interrupted_training_continues_and_remakes_what_reads_it(quick_run):
    path, data, out, _ = quick_run
    records = json.loads((out / "stages.json").read_text())
    records["stages"]["train.resvae"]["status"] = "started"  # as a Ctrl-C during training leaves it
    (out / "stages.json").write_text(json.dumps(records))
    best = out / "train" / "resvae" / "best.pt"
    stamp = best.stat().st_mtime_ns
    result = run(path, "-o", out, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    statuses = {s["stage"]: s["status"] for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert [statuses.pop(k) for k in ("train.resvae", "evaluate", "deblur")] == ["done"] * 3
    assert set(statuses.values()) == {"skipped"}
    assert best.stat().st_mtime_ns == stamp  # continued from last.pt (already at step 2), not retrained


def _bad(tmp_path, mutate):
    data = yaml.safe_load(QUICKSTART.read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BAD = {
    "unknown-stage": (lambda d: d.update(evalute={"images": ["test"]}), "evalute: unknown stage"),
    "unknown-key": (lambda d: d["prepare"].update(psf_fwhmm=3), "prepare.psf_fwhmm: unknown key"),
    "wrong-type": (lambda d: d["train"]["resvae"].update(max_steps="many"), "train.resvae.max_steps: expected int"),
    "sim-wrong-type": (lambda d: d["simulate"]["train"].update(n=[1]), "simulate.train.n: expected int"),
    "eval-unknown-key": (lambda d: d["evaluate"].update(model=["resvae"]), "evaluate.model: unknown key"),
    "unknown-set": (lambda d: d["deblur"].update(inputs=["skyy"]), "deblur.inputs[0]: 'skyy' is neither"),
    "unknown-model": (lambda d: d["evaluate"].update(models=["resvea"]), "evaluate.models[0]: 'resvea' is neither"),
    "unknown-deblur-model": (lambda d: d["deblur"].update(model="resvea"), "deblur.model: 'resvea' is neither"),
    "test-seed-trains": (lambda d: d["simulate"]["test"].update(field="train"), "simulate.test: seed 1000"),
    # one PSF specification: a pipeline takes every PSF the CLI does (airy too), with the same checks
    "bad-psf": (lambda d: d["evaluate"].update(psf={"shape": "airy"}), "evaluate.psf: psf shape 'airy' needs a radius"),
    "flat-psf-key": (lambda d: d["evaluate"].update(psf_shape="airy"), "evaluate.psf_shape: unknown key"),
    "not-a-mapping": (lambda d: d.update(train=["resvae"]), "train: expected a mapping of names"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_pipeline_is_one_line_exit_2(tmp_path, case):
    mutate, message = BAD[case]
    path = _bad(tmp_path, mutate)
    result = run(path, "-o", tmp_path / "run")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert str(path) in lines[0]
    assert not (tmp_path / "run").exists()


def test_train_config_from_a_file_with_overrides(tmp_path):
    (tmp_path / "train_small.yaml").write_text(yaml.safe_dump({"train": {"model": "vae", "max_steps": 7, "lr": 1e-3}}))
    data = yaml.safe_load(QUICKSTART.read_text())
    data["train"] = {"a": "train_small.yaml", "b": {"config": "train_small.yaml", "max_steps": 9}}
    data["evaluate"]["models"] = ["a", "b"]
    data["deblur"]["model"] = "b"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    p = load_pipeline(path)
    assert (p.train["a"].model, p.train["a"].max_steps, p.train["b"].max_steps, p.train["b"].lr) == ("vae", 7, 9, 1e-3)
    data["train"] = {"a": {"config": "train_small.yaml", "max_stepz": 9}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="max_stepz: unknown key"):
        load_pipeline(path)


def test_data_stage_checks_the_manifest(tmp_path, data_dir, monkeypatch):
    manifest = REPO / "data_manifests" / "bench_v1.yaml"
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"data": {"manifest": str(manifest), "fields": ["val"], "prepare_fields": []}}))
    monkeypatch.delenv("ASTROSR_DATA_DIR", raising=False)
    result = run(path, "-o", tmp_path / "run")
    assert result.exit_code == 2 and "no data directory" in result.stderr
    result = run(path, "-o", tmp_path / "run", "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    checked = json.loads((tmp_path / "run" / "data.json").read_text())["files"]
    assert sorted(Path(p).name for p, _ in checked) == ["M13_blue_0005.fits", "reprojected_sdss_i.fits"]


def _run_train_only(path, data, tmp_path):
    """Run ``data`` (a quickstart dict) up to its training stages, 2 steps each; the run directory."""
    data.pop("evaluate")
    data.pop("deblur")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    result = run(path, "-o", out, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    return out


def test_a_model_fine_tuned_from_an_earlier_one_of_the_run(tmp_path):
    from astrosr.checkpoint import load_checkpoint

    path, data = small_quickstart(tmp_path)
    base = data["train"]["resvae"]
    data["train"]["tuned"] = dict(base, init="resvae", max_steps=2,
                                  model_options=dict(base["model_options"], posterior=True, noise_head=True))
    out = _run_train_only(path, data, tmp_path)
    records = json.loads((out / "stages.json").read_text())["stages"]
    assert list(records)[-2:] == ["train.resvae", "train.tuned"]
    first, tuned = load_checkpoint(out / "train/resvae/best.pt"), load_checkpoint(out / "train/tuned/best.pt")
    assert tuned["train_config"]["init"] == str(out / "train/resvae/best.pt")
    assert tuned["model_config"]["posterior"] and not first["model_config"].get("posterior", False)
    assert "post_head.weight" in tuned["state_dict"]


def test_a_simulate_set_keeps_its_options_and_a_stage_trains_on_two_fields(tmp_path):
    from astrosr.checkpoint import load_checkpoint
    from astrosr.dataset import PairsDataset

    path, data = small_quickstart(tmp_path)
    data["simulate"]["crowded"] = {"n": 1, "seed": 100, "size": 128, "field": "crowded", "stars": "400:500",
                                   "psf_fwhm": 1.2}
    data["train"]["resvae"]["train_field"] = ["train", "crowded"]
    out = _run_train_only(path, data, tmp_path)
    header = fits.getheader(out / "simulate/crowded/sim_s100_000.fits")
    assert header["PSFFWHM"] == 1.2 and 400 <= header["NSTARS"] <= 500  # the set's options, not the defaults
    pairs = out / "prepare/pairs.h5"
    both = PairsDataset(pairs, field=["train", "crowded"])
    assert len(both) == len(PairsDataset(pairs, field="train")) + len(PairsDataset(pairs, field="crowded"))
    assert load_checkpoint(out / "train/resvae/best.pt")["train_config"]["train_field"] == ["train", "crowded"]
