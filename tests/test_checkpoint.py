"""checkpoint: atomic plain-dict saves, safe loads, safetensors export, one-line errors."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from astrosr import checkpoint as ckpt
from astrosr.cli import cli
from astrosr.errors import CheckpointError
from astrosr.models import ResVAE


def _payload(step=1, width=8):
    torch.manual_seed(step)
    model = ResVAE(width=width)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model, {"model": "resvae", "model_config": model.config, "state_dict": model.state_dict(), "step": step,
                   "psf": {"shape": "moffat", "fwhm": 4.0}, "best": {"step": step, "tile_mse": 0.01}}


def test_round_trip_and_load_model(tmp_path):
    model, payload = _payload()
    path = ckpt.save_checkpoint(tmp_path / "last.pt", payload)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 1 and loaded["model_config"] == model.config
    rebuilt, info = ckpt.load_model(path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["model"] == "resvae" and info["psf"]["fwhm"] == 4.0 and not rebuilt.training
    blu = torch.rand(1, 1, 64, 64)
    assert torch.equal(rebuilt.restore(blu), model.eval().restore(blu))


def test_export_to_safetensors_and_load_it(tmp_path):
    model, payload = _payload()
    source = ckpt.save_checkpoint(tmp_path / "best.pt", payload)
    result = CliRunner().invoke(cli, ["export", str(source), "-o", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    weights = tmp_path / "export" / "model.safetensors"
    sidecar = json.loads((tmp_path / "export" / "model.json").read_text())
    assert sidecar["model"] == "resvae" and sidecar["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    rebuilt, info = ckpt.load_model(weights)
    blu = torch.rand(2, 1, 48, 80)
    assert torch.equal(rebuilt.restore(blu), model.eval().restore(blu))
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    again = CliRunner().invoke(cli, ["export", str(source), "-o", str(tmp_path / "export")])
    assert again.exit_code == 2 and "output exists" in again.output


def test_kill_during_save_leaves_the_previous_checkpoint_readable(tmp_path):
    path = tmp_path / "last.pt"
    _, payload = _payload(step=1)
    ckpt.save_checkpoint(path, payload)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import sys, time, torch
        from astrosr import checkpoint
        real_save = torch.save
        def slow_save(obj, f):
            real_save(obj, f)
            with open(f, 'r+b') as handle:   # leave a half-written temporary file
                handle.truncate(handle.seek(0, 2) // 2)
            print('writing', flush=True)
            time.sleep(60)
        torch.save = slow_save
        checkpoint.save_checkpoint({str(path)!r}, {{'model': 'resvae', 'model_config': {{}}, 'state_dict': {{}}, 'step': 2}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["step"] == 1


def test_corrupt_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    _, payload = _payload()
    good = ckpt.save_checkpoint(tmp_path / "good.pt", payload)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    other = tmp_path / "other.pt"
    torch.save({"model": "unet", "model_config": {}, "state_dict": {}}, other)
    cases = [(truncated, "not a readable checkpoint"), (garbage, "not a readable checkpoint"),
             (foreign, "not an astrosr checkpoint"), (other, "unknown model 'unet'"),
             (tmp_path / "missing.pt", "checkpoint not found")]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message) as info:
            ckpt.load_checkpoint(path)
        assert "\n" not in str(info.value) and str(path.name) in str(info.value)


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": "resvae", "model_config": {}, "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable checkpoint"):
        ckpt.load_model(path)
    assert not marker.exists()


def test_weights_that_do_not_fit_and_bad_safetensors(tmp_path, monkeypatch):
    _, payload = _payload(width=8)
    payload["model_config"] = dict(payload["model_config"], width=16)
    mismatch = ckpt.save_checkpoint(tmp_path / "mismatch.pt", payload)
    with pytest.raises(CheckpointError, match="mismatch.pt: weights do not fit the resvae config"):
        ckpt.load_model(mismatch)
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="no sibling config lonely.json"):
        ckpt.load_model(lonely)
    (tmp_path / "lonely.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"lonely\.json: not an astrosr model config \(expected a JSON object, got list\)"):
        ckpt.load_model(lonely)
    (tmp_path / "lonely.json").write_text(json.dumps({"model": "resvae", "model_config": {}}))
    with pytest.raises(CheckpointError, match="lonely.safetensors: not a readable safetensors file"):
        ckpt.load_model(lonely)
    monkeypatch.setattr(ckpt, "DEFAULT_WEIGHTS", tmp_path / "weights" / "default.safetensors")
    with pytest.raises(CheckpointError, match="no default weights"):
        ckpt.load_model("default")


def test_cli_export_of_a_bad_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    result = CliRunner().invoke(cli, ["export", str(bad), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "bad.pt: not a readable checkpoint" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_load_failures_say_what_is_wrong_without_torchs_unsafe_advice(tmp_path):
    _, payload = _payload()
    good = ckpt.save_checkpoint(tmp_path / "good.pt", payload)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:3000])
    text = tmp_path / "notes.pt"
    text.write_text("garbage\n")

    class Evil:
        def __reduce__(self):
            return (print, ("never",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": "resvae", "x": Evil()}, evil)
    cases = [(truncated, "truncated, corrupt or not a PyTorch file"), (text, "truncated, corrupt or not a PyTorch file"),
             (evil, "it holds Python objects other than tensors and plain data; refused without running them")]
    for path, reason in cases:
        with pytest.raises(CheckpointError) as info:
            ckpt.load_checkpoint(path)
        # torch's own text told users to re-run with weights_only=False: arbitrary code from a downloaded file
        assert str(info.value) == f"{path}: not a readable checkpoint ({reason})"


def test_exported_weights_get_the_umask_permissions(tmp_path):
    _, payload = _payload()
    source = ckpt.save_checkpoint(tmp_path / "best.pt", payload)
    old = os.umask(0o022)
    try:
        weights = ckpt.export_model(source, tmp_path / "export")
    finally:
        os.umask(old)
    # safetensors writes 0600, which colleagues on a shared disk could not read
    assert weights.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "export" / "model.json").stat().st_mode & 0o777 == 0o644


# --- the per-process model cache ---------------------------------------------------


def test_cached_model_is_loaded_once_and_reloaded_when_the_file_changes(tmp_path):
    ckpt.clear_model_cache()
    _, payload = _payload(step=1)
    path = ckpt.save_checkpoint(tmp_path / "best.pt", payload)
    model, info = ckpt.load_model_cached(path)
    assert ckpt.load_model_cached(str(path))[0] is model  # str or Path: one key
    assert ckpt.load_model_cached(path, device="cpu")[1] is info
    before = path.stat()
    ckpt.save_checkpoint(path, _payload(step=2)[1])  # retrained under the same name
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # a coarse clock still sees a change
    again, again_info = ckpt.load_model_cached(path)
    assert again is not model and again_info["step"] == 2
    assert again_info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ckpt.clear_model_cache()


def test_model_cache_keeps_one_model_and_clears(tmp_path):
    ckpt.clear_model_cache()
    a = ckpt.save_checkpoint(tmp_path / "a.pt", _payload(step=1)[1])
    b = ckpt.save_checkpoint(tmp_path / "b.pt", _payload(step=3)[1])
    first = ckpt.load_model_cached(a)[0]
    assert ckpt.load_model_cached(b)[1]["step"] == 3
    again = ckpt.load_model_cached(a)[0]
    assert again is not first  # one model per process: loading b's dropped a's
    assert ckpt.load_model_cached(a)[0] is again
    ckpt.clear_model_cache()
    assert ckpt.load_model_cached(a)[0] is not again
    ckpt.clear_model_cache()
    with pytest.raises(CheckpointError, match="model file not found"):
        ckpt.load_model_cached(tmp_path / "nope.pt")
