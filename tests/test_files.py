"""Output helpers: atomic writes, output directories and the output-is-an-input guard."""

import os

import pytest

from astrosr.errors import InputError
from astrosr.files import atomic_path, check_not_input, make_dir


def test_make_dir_creates_parents_and_names_a_file_in_the_way(tmp_path):
    assert make_dir(tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: is a file, not a directory"):
        make_dir(blocker)
    with pytest.raises(InputError, match=r"notes\.txt/sub: cannot create the output directory \(Not a directory\)"):
        make_dir(blocker / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_make_dir_refuses_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(InputError, match=r"ro: output directory is not writable"):
        make_dir(ro)


def test_atomic_path_under_a_file_is_one_line_input_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"afile: is a file, not a directory"):
        with atomic_path(blocker / "out.h5"):
            pytest.fail("must not get here")
    assert blocker.read_text() == "x"


def test_check_not_input_sees_the_same_file_under_another_name(tmp_path):
    src = tmp_path / "img.fits"
    src.write_bytes(b"data")
    link = tmp_path / "link.fits"
    link.symlink_to(src)
    check_not_input(tmp_path / "new.h5", [src])  # a new output is fine
    check_not_input(tmp_path / "other", [src, tmp_path / "missing.fits"])
    with pytest.raises(InputError, match=r"link\.fits: output is also an input \(.*img\.fits\)"):
        check_not_input(link, [src])


# --- write failures: one line naming the output, exit 2, nothing left at the output path -------------------

import errno  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from astropy.io import fits  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from astrosr.checkpoint import save_checkpoint  # noqa: E402
from astrosr.cli import cli  # noqa: E402
from astrosr.files import remove_stale_temporaries, write_failure  # noqa: E402
from astrosr.models import build_model  # noqa: E402


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resvae", {"width": 8, "levels": 2})
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, {"model": "resvae", "model_config": model.config, "state_dict": model.state_dict()})
    return path


def _commands(tmp_path, data_dir, tiny, tiny_pairs):
    image = tmp_path / "in.fits"
    shutil.copy(data_dir / "synth.fits", image)
    return {
        "prepare": (["prepare", image, "-o", tmp_path / "o" / "p.h5"], "h5py.File", tmp_path / "o" / "p.h5"),
        "simulate": (["simulate", "-o", tmp_path / "o", "--n", "1", "--size", "128"], "astropy.io.fits.HDUList.writeto",
                     tmp_path / "o" / "sim_s0_000.fits"),
        "deblur": (["deblur", image, "-o", tmp_path / "o", "--model", tiny, "--device", "cpu", "--psf-fwhm", "4",
                    "--target-fwhm", "0", "--ignore-psf-check"],
                   "astropy.io.fits.HDUList.writeto", tmp_path / "o" / "in_deblur.fits"),
        "evaluate": (["evaluate", image, "--baselines-only", "--panels", "0", "-o", tmp_path / "o"],
                     "json.dumps", tmp_path / "o" / "summary.json"),
        "export": (["export", tiny, "-o", tmp_path / "o"], "safetensors.torch.save_file", tmp_path / "o" / "model.safetensors"),
        "train": (["train", tiny_pairs, "-o", tmp_path / "o", "--max-steps", "2", "--set", "val_field=", "--no-progress",
                   "--set", "model_options={width: 8, levels: 2}"], "torch.save", tmp_path / "o" / "best.pt"),
    }


@pytest.mark.parametrize("failure, reason", [(_full, "No space left on device"), (_denied, "Permission denied")])
@pytest.mark.parametrize("command", ["prepare", "simulate", "deblur", "evaluate", "export", "train"])
def test_a_failed_write_is_one_line_and_leaves_nothing(monkeypatch, tmp_path, data_dir, tiny, tiny_pairs, command,
                                                        failure, reason):
    args, target, output = _commands(tmp_path, data_dir, tiny, tiny_pairs)[command]
    before = sha256_of(tmp_path / "in.fits")
    monkeypatch.setattr(target, failure)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"cannot write ({reason})" in lines[0] and "Traceback" not in result.output
    assert not output.exists()
    leftovers = [p.name for p in (tmp_path / "o").rglob("*.tmp")] if (tmp_path / "o").exists() else []
    assert leftovers == [] and sha256_of(tmp_path / "in.fits") == before


def sha256_of(path):
    from astrosr.files import sha256_file

    return sha256_file(path)


def test_write_failure_reads_errno_from_h5py_style_messages():
    message = "Unable to create file (unable to open file: name = 'x.h5', errno = 28, error message = 'No space')"
    assert str(write_failure(OSError(message), "x.h5")) == "x.h5: cannot write (No space left on device); nothing was kept there"
    assert write_failure(OSError(errno.ECONNREFUSED, "refused"), "x.h5") is None


def test_a_kill_9_mid_write_leaves_a_temporary_the_next_run_removes(tmp_path):
    out = tmp_path / "big.bin"
    writer = (f"import time; from astrosr.files import atomic_path\n"
              f"with atomic_path({str(out)!r}) as tmp:\n"
              f"    open(tmp, 'wb').write(b'x' * 100000); print('writing', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    stale = list(tmp_path.glob(".big.bin.astrosr-*.tmp"))
    assert len(stale) == 1 and f"-{child.pid}.tmp" in stale[0].name and not out.exists()
    # a live writer's temporary (this process) and another host's are never touched
    mine = tmp_path / f".big.bin.astrosr-{socket.gethostname()}-{os.getpid()}.tmp"
    theirs = tmp_path / ".big.bin.astrosr-otherhost-1.tmp"
    mine.write_bytes(b"live")
    theirs.write_bytes(b"remote")
    assert remove_stale_temporaries(out) == stale
    assert mine.exists() and theirs.exists() and not stale[0].exists()
    mine.unlink()
    with atomic_path(out) as tmp:  # the rerun itself cleans up too
        tmp.write_bytes(b"done")
    assert out.read_bytes() == b"done" and [p.name for p in tmp_path.glob(".big.bin.*")] == [theirs.name]
    time.sleep(0)
