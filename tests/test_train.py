"""train: exact resume, run outputs, DDP on CPU, losses against independent maths, CLI errors."""

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from skimage.metrics import structural_similarity

from astrosr.checkpoint import load_checkpoint, load_model
from astrosr.cli import cli
from astrosr.config import from_dict
from astrosr.dataset import PairsDataset
from astrosr.errors import ConfigError, InputError
from astrosr.losses import lr_factor, ssim_loss
from astrosr.train import TrainConfig, load_config, train
from astrosr.validation import image_validation, is_better, load_val_images

TINY = {"width": 8, "levels": 2, "mid_blocks": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**overrides):
    base = dict(model_options=TINY, batch=4, crop=64, max_steps=4, warmup=2, kl_warmup=2, val_every=2, log_every=1,
                progress=False, val_images=False, threads=1, consistency_weight=0.1, ssim_weight=0.1)
    base.update(overrides)
    return TrainConfig(**base)


def test_resume_continues_exactly(tiny_pairs, tmp_path):
    straight = train(tiny_pairs, _config(), tmp_path / "straight")
    train(tiny_pairs, _config(), tmp_path / "split", stop_at=2)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 2
    resumed = train(tiny_pairs, _config(), tmp_path / "split", resume=True)
    a, b = straight["module"].state_dict(), resumed["module"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = load_checkpoint(tmp_path / "split" / "last.pt")
    assert last["step"] == 4 and last["scheduler"]["last_epoch"] == 4
    with open(tmp_path / "split" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "straight" / "metrics.csv") as f:
        rows_straight = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_straight]


def test_a_run_writes_every_promised_file(tiny_pairs, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_pairs, _config(model_options={**TINY, "wiener": False}), out)
    for name in ("metrics.csv", "loss_curve.png", "config.yaml", "best.pt", "last.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"step", "lr", "loss", "recon", "kl", "consistency", "ssim", "val_tile_ssim", "val_tile_mse"} <= set(rows[0])
    assert rows[1]["val_tile_mse"] != "" and float(rows[1]["val_tile_mse"]) > 0
    reloaded = from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text()))
    assert reloaded == _config(model_options={**TINY, "wiener": False})
    model, info = load_model(out / "best.pt")
    assert info["model"] == "resvae" and info["psf"]["fwhm"] == 4.0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    assert summary["best"]["step"] in (2, 4)


def test_progress_goes_to_the_callback_and_validation_to_logging(tiny_pairs, tmp_path, caplog, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger("astrosr"), "handlers", [])  # a CLI test may have installed its display
    calls = []
    with caplog.at_level(logging.INFO, logger="astrosr.train"):
        train(tiny_pairs, _config(max_steps=2, progress=True), tmp_path / "p", progress=lambda *a: calls.append(a))
    assert calls == [("steps", 0, 2), ("steps", 1, 2), ("steps", 2, 2)]
    lines = [r.getMessage() for r in caplog.records if r.name == "astrosr.train"]
    assert len(lines) == 1 and lines[0].startswith('step 2: val {"step": 2, "tile_ssim": ')
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # the library draws nothing


def test_vae_trains_through_the_same_loop(tiny_pairs, tmp_path):
    summary = train(tiny_pairs, _config(model="vae", model_options={"latent": 8}, crop=0, loss="mse", beta=1.0),
                    tmp_path / "vae")
    assert summary["steps"] == 4 and summary["best"]["tile_mse"] > 0


def test_ddp_two_processes_on_cpu_end_with_identical_weights(tiny_pairs, tmp_path):
    # the real CLI under torch.distributed.run; each rank dumps the weights train() returned
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent("""
        import os, sys, torch
        import astrosr.train
        from astrosr.cli import cli
        real_train = astrosr.train.train
        def dumping_train(*args, **kwargs):
            summary = real_train(*args, **kwargs)
            torch.save(summary["module"].state_dict(), os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
            return summary
        astrosr.train.train = dumping_train
        cli.main(sys.argv[2:], standalone_mode=True)
    """))
    out = tmp_path / "ddp"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(out), "train", str(tiny_pairs), "-o", str(out / "run"), "--max-steps", "3",
           "--batch", "2", "--threads", "1", "--no-progress", "--set", "crop=64", "--set", "val_every=3",
           "--set", "val_images=false", "--set", f"model_options={json.dumps(TINY)}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert torch.count_nonzero(r0["tail.weight"]) > 0  # it did train
    assert json.loads((out / "run" / "summary.json").read_text())["world_size"] == 2


def test_lr_schedule_is_linear_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, warmup=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def test_ssim_loss_equals_skimage(rng):
    x, y = rng.random((64, 64)), rng.random((64, 64)) * 0.5 + 0.2
    ours = ssim_loss(torch.tensor(x)[None, None], torch.tensor(y)[None, None]).item()
    assert ours == pytest.approx(structural_similarity(x, y, data_range=1.0), abs=1e-9)


def test_checkpoint_selection_follows_contracts():
    rl = {"flux_err": 0.054, "spurious": 3 / 153}
    good = {"mse": 0.02, "flux_err": 0.05, "spurious": 0.01}
    better_mse_bad_flux = {"mse": 0.01, "flux_err": 0.09, "spurious": 0.0}
    better_mse_spurious = {"mse": 0.01, "flux_err": 0.04, "spurious": 0.05}
    assert is_better(good, None, reference=rl)
    assert not is_better(better_mse_bad_flux, good, reference=rl)
    assert not is_better(better_mse_spurious, good, reference=rl)  # more invented sources than RL: never best over a clean one
    assert is_better({"mse": 0.019, "flux_err": 0.054, "spurious": 3 / 153}, good, reference=rl)  # ties with RL pass
    # while none meets both: the lowest flux error among those meeting the spurious condition, then the lowest flux error
    assert is_better({"mse": 0.03, "flux_err": 0.07, "spurious": 0.0}, better_mse_bad_flux, reference=rl)
    assert is_better({"mse": 0.5, "flux_err": 0.3, "spurious": 0.0}, better_mse_spurious, reference=rl)
    assert is_better({"mse": 0.5, "flux_err": 0.03, "spurious": 0.2}, better_mse_spurious, reference=rl)
    assert is_better({"mse": 0.01}, {"mse": 0.02}, reference=None)  # no reference (a model adding pixels): MSE
    assert is_better({"tile_mse": 0.1}, {"tile_mse": 0.2}, reference=None)


def test_rl_reference_scores_richardson_lucy_on_the_val_images(data_dir, tmp_path):
    from astrosr import metrics
    from astrosr.baselines import richardson_lucy
    from astrosr.validation import rl_reference

    pairs = tmp_path / "val.h5"
    from astrosr.prepare import prepare_pairs

    prepare_pairs([(data_dir / "M51.fits", "val")], pairs, progress=False)
    images, reason = load_val_images(PairsDataset(pairs, field="val"))
    assert reason is None
    reference = rl_reference(images)
    img = images[0]
    independent = metrics.score(img.ref, richardson_lucy(img.blu, img.kernel, n=20))
    assert reference["flux_err"] == pytest.approx(float(np.median(independent.flux_err)))
    assert reference["n_spurious"] == independent.n_spurious and reference["n_sources"] == independent.n_sources


def test_whole_image_validation_regenerates_prepares_val_blu(data_dir, tmp_path):
    prepare = pytest.importorskip("astrosr.prepare")
    pairs = tmp_path / "val.h5"
    prepare.prepare_pairs([(data_dir / "synth.fits", "val")], pairs, progress=False)
    val = PairsDataset(pairs, field="val")
    images, reason = load_val_images(val)
    assert reason is None and len(images) == 1
    img = images[0]
    lo, hi = val.images[0]["lo"], val.images[0]["hi"]
    for i in (0, 7):
        y, x = int(val.tiles["y"][i]), int(val.tiles["x"][i])
        stored = val.arrays(i)[0]
        np.testing.assert_allclose((img.blu[y : y + 128, x : x + 128] - lo) / (hi - lo), stored, atol=1e-6)
    from astrosr.models import ResVAE

    scores = image_validation(ResVAE(width=8), images, device="cpu", tile=256)
    assert scores["flux_err"] is not None and 0.99 < scores["ssim"] <= 1.0


def _invoke(args):
    return CliRunner().invoke(cli, args)


def test_cli_bad_config_and_bad_checkpoint_exit_2(tiny_pairs, tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: resvae\nlearning_rate: 0.1\n")
    result = _invoke(["train", str(tiny_pairs), "--config", str(unknown), "-o", str(tmp_path / "a")])
    assert result.exit_code == 2 and "learning_rate: unknown key" in result.output
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("batch: many\n")
    result = _invoke(["train", str(tiny_pairs), "--config", str(wrong), "-o", str(tmp_path / "a")])
    assert result.exit_code == 2 and "batch: expected int, got 'many'" in result.output
    result = _invoke(["train", str(tiny_pairs), "-o", str(tmp_path / "a"), "--set", "model_options.depth=3"])
    assert result.exit_code == 2 and "model_options.depth: not an option of resvae" in result.output
    result = _invoke(["train", str(tiny_pairs), "-o", str(tmp_path / "a"), "--set", "oops"])
    assert result.exit_code == 2 and "--set 'oops': expected KEY=VALUE" in result.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"PK\x03\x04 truncated zip")
    result = _invoke(["train", str(tiny_pairs), "-o", str(run), "--resume"])
    assert result.exit_code == 2 and "last.pt: not a readable checkpoint" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = _invoke(["train", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "nope.h5: pairs file not found" in result.output


def test_an_existing_run_needs_resume_and_fixed_options(tiny_pairs, tmp_path):
    out = tmp_path / "run"
    train(tiny_pairs, _config(max_steps=2), out)
    with pytest.raises(InputError, match="already holds a run"):
        train(tiny_pairs, _config(max_steps=2), out)
    with pytest.raises(ConfigError, match="lr: .* cannot change on --resume"):
        train(tiny_pairs, _config(max_steps=2, lr=1.0), out, resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        train(tiny_pairs, _config(), tmp_path / "empty", resume=True)


def test_load_config_reads_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  model: vae\n  batch: 8\n  model_options: {latent: 32}\n")
    cfg = load_config(path, {"lr": 1e-4, "model_options.latent": 16, "seed": None})
    assert (cfg.model, cfg.batch, cfg.lr, cfg.model_options) == ("vae", 8, 1e-4, {"latent": 16})
    with pytest.raises(ConfigError, match="loss: expected 'l1' or 'mse'"):
        load_config(None, {"loss": "huber"})


def test_config_errors_name_the_file_or_the_command_line(tmp_path):
    # errors read 'c.yaml.losss: ...' (a file name?) and blamed the YAML for a bad --set value
    path = tmp_path / "c.yaml"
    path.write_text("losss: l2\n")
    with pytest.raises(ConfigError, match=r"^\S*c\.yaml: losss: unknown key \(known: "):
        load_config(path)
    path.write_text("batch: 8\n")
    with pytest.raises(ConfigError, match=r"^command line: batch: expected int, got 'abc'$"):
        load_config(path, {"batch": "abc"})
    with pytest.raises(ConfigError, match=r"^command line: bach: unknown key"):
        load_config(path, {"bach": 3})
    with pytest.raises(ConfigError, match=r"^command line: lr must be > 0"):
        load_config(path, {"lr": -1.0})
    path.write_text("lr: -1.0\n")
    with pytest.raises(ConfigError, match=r"^\S*c\.yaml: lr must be > 0"):
        load_config(path, {"batch": 4})


@pytest.mark.parametrize("name, model", [("train_resvae.yaml", "resvae"), ("train_vae.yaml", "vae")])
def test_shipped_configs_load_and_build(name, model):
    from pathlib import Path

    from astrosr.models import build_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "pipelines" / name)
    assert cfg.model == model
    params = sum(p.numel() for p in build_model(cfg.model, cfg.model_options).parameters())
    assert params == 3_189_645 if model == "vae" else 300_000 < params < 2_000_000


def test_training_without_a_val_field_keeps_the_latest(tiny_pairs, tmp_path):
    summary = train(tiny_pairs, _config(max_steps=2, val_field=""), tmp_path / "noval")
    assert summary["best"] == {"step": 2} and "no validation" in summary["val_images"]


def test_max_minutes_stops_and_saves_a_resumable_run(tiny_pairs, tmp_path):
    summary = train(tiny_pairs, _config(max_steps=50, max_minutes=1e-9), tmp_path / "timed")
    assert summary["steps"] == 1 and load_checkpoint(tmp_path / "timed" / "last.pt")["step"] == 1


def test_ctrl_c_says_where_last_pt_is_and_how_to_resume(tiny_pairs, tmp_path):
    import shutil
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    child = subprocess.Popen([shutil.which("astrosr") or "astrosr", "train", str(tiny_pairs), "-o", str(out),
                              "--max-steps", "100000", "--no-progress", "--set", "val_field=", "--threads", "1",
                              "--set", "model_options={width: 8, levels: 2}", "--set", "log_every=1"],
                             stderr=subprocess.PIPE, text=True,
                             # a shell's background job starts with SIGINT ignored; the user's terminal does not
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait for logged steps, not a fixed time: a slow machine may take seconds before its first step
    metrics, deadline = out / "metrics.csv", time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "last.pt holds the run so far" in lines[0] and "--resume" in lines[0], err
    assert (out / "last.pt").is_file() and "Aborted" not in err


def test_the_readmes_prepare_then_train_chains_without_a_val_field(tmp_path, caplog):
    """`prepare sims/*.fits -o pairs.h5` then `train pairs.h5`: whole training images are held out for validation."""
    from astrosr.prepare import prepare_pairs
    from astrosr.simulate import simulate_fields

    sims = simulate_fields(tmp_path / "sims", n=3, seed=7, size=128)
    prepare_pairs(sims, tmp_path / "pairs.h5")
    cfg = load_config(overrides={"max_steps": 2, "val_every": 1, "batch": 2, "progress": False, "threads": 1,
                                 "model_options.width": 8, "model_options.levels": 2})
    with caplog.at_level(logging.INFO, logger="astrosr.train"):
        summary = train(tmp_path / "pairs.h5", cfg, tmp_path / "run")
    assert "validating on 1 held-out training image(s)" in caplog.text
    assert summary["best"]["mse"] is not None and (tmp_path / "run" / "best.pt").is_file()
    assert summary["val_reference"]["method"] == "Richardson-Lucy n=20"  # the checkpoint rule's bar, on those images
    assert "held-out" in summary["val_images"] and summary["train_tiles"] == 2  # 3 images of 1 tile, one held out
    # a single image trains without validation, said once, and keeps its latest checkpoint as best
    prepare_pairs(sims[:1], tmp_path / "one.h5")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="astrosr.train"):
        summary = train(tmp_path / "one.h5", cfg, tmp_path / "run1")
    assert "a single training image: training without validation" in caplog.text
    assert summary["best"] == {"step": 2} and (tmp_path / "run1" / "best.pt").is_file()


def test_init_starts_from_given_weights_and_refuses_another_architecture(tiny_pairs, tmp_path):
    first = train(tiny_pairs, _config(max_steps=2), tmp_path / "first")
    # a fine-tune that can hardly move (lr 1e-12, no decay) keeps the weights it started from
    still = dict(max_steps=1, lr=1e-12, weight_decay=0.0)
    tuned = train(tiny_pairs, _config(**still, init=str(tmp_path / "first" / "last.pt")), tmp_path / "ft")
    a, b = first["module"].state_dict(), tuned["module"].state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-8) for k in a)
    fresh = train(tiny_pairs, _config(**still), tmp_path / "fresh")["module"].state_dict()
    assert not all(torch.allclose(a[k].float(), fresh[k].float(), atol=1e-8) for k in a)
    with pytest.raises(ConfigError, match=r"init: .*last\.pt holds a resvae with .*not this run's resvae"):
        train(tiny_pairs, _config(max_steps=1, init=str(tmp_path / "first" / "last.pt"),
                                  model_options={**TINY, "width": 4}), tmp_path / "other")


def test_trainable_moves_only_the_named_parameters(tiny_pairs, tmp_path):
    import torch

    options = dict(TINY, posterior=True, noise_head=True)
    first = train(tiny_pairs, _config(model_options=options, max_steps=2), tmp_path / "first")
    tuned = train(tiny_pairs, _config(model_options=options, max_steps=2, init=str(tmp_path / "first" / "last.pt"),
                                      trainable=["to_mu", "to_logvar", "scale_head"]), tmp_path / "tuned")
    before, after = first["module"].state_dict(), tuned["module"].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("to_mu", "to_logvar", "scale_head")) for k in changed)
    with pytest.raises(ConfigError, match="trainable: no parameter of resvae starts with nothing_here"):
        train(tiny_pairs, _config(trainable=["nothing_here"]), tmp_path / "bad")


def test_fresh_restarts_the_named_parts_as_if_init_lacked_them(tiny_pairs, tmp_path):
    import torch

    still = dict(max_steps=1, lr=1e-12, weight_decay=0.0)
    train(tiny_pairs, _config(max_steps=2), tmp_path / "headless")
    options = dict(TINY, noise_head=True)
    with_head = train(tiny_pairs, _config(model_options=options, max_steps=2, init=str(tmp_path / "headless" / "last.pt")),
                      tmp_path / "head")
    # a new head on the model that has one starts where a head added to the headless source starts
    again = train(tiny_pairs, _config(model_options=options, **still, init=str(tmp_path / "head" / "last.pt"),
                                      fresh=["scale_head"]), tmp_path / "again")["module"].state_dict()
    added = train(tiny_pairs, _config(model_options=options, **still, init=str(tmp_path / "headless" / "last.pt")),
                  tmp_path / "added")["module"].state_dict()
    trained = with_head["module"].state_dict()
    head = [k for k in again if k.startswith("scale_head")]
    assert head and all(torch.allclose(again[k], added[k], atol=1e-8) for k in head)
    assert not all(torch.equal(again[k], trained[k]) for k in again if k.startswith("scale_head"))
    assert all(torch.allclose(again[k], trained[k], atol=1e-8) for k in again if k not in head)


@pytest.mark.parametrize("overrides, message", [
    (dict(fresh=["scale_head"]), r"fresh: \['scale_head'\] needs init"),
    (dict(fresh=["scale_head"], init="default", trainable=["to_mu"]),
     r"fresh: \['scale_head'\] start at random but are not trainable \(\['to_mu'\]\)"),
])
def test_fresh_needs_init_and_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


def test_fresh_names_a_part_of_init(tiny_pairs, tmp_path):
    train(tiny_pairs, _config(max_steps=1), tmp_path / "first")
    with pytest.raises(ConfigError, match=r"fresh: no parameter of .*last\.pt starts with nothing_here"):
        train(tiny_pairs, _config(max_steps=1, init=str(tmp_path / "first" / "last.pt"), fresh=["head", "nothing_here"]),
              tmp_path / "bad")
