"""Small file helpers shared by every stage that writes: atomic outputs and checksums."""

import contextlib
import hashlib
import os
from pathlib import Path

from .errors import InputError

__all__ = ["atomic_path", "make_dir", "check_not_input", "sha256_file"]


def make_dir(path):
    """Create directory ``path`` (and its parents) or raise a one-line InputError naming it.

    A path under a regular file, a read-only file system or a directory
    without write permission is the user's to fix, not a traceback.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, not a directory; choose another output directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output directory ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: output directory is not writable")
    return path


def check_not_input(out, inputs):
    """Raise InputError if output ``out`` is one of the ``inputs`` (so overwriting cannot destroy an input)."""
    out = Path(out)
    if not out.exists():
        return
    for path in inputs:
        path = Path(path)
        if path.exists() and os.path.samefile(out, path):
            raise InputError(f"{out}: output is also an input ({path}); choose another output name")


@contextlib.contextmanager
def atomic_path(path, *, overwrite=False):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception (Ctrl-C included) the temporary file is removed, so
    nothing half-written ever sits at ``path``.

    Parameters
    ----------
    path : str or Path
        Final output path.
    overwrite : bool, optional
        If False (default) an existing ``path`` is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output exists (overwrite=True replaces it)")
    make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path, *, chunk=1 << 20):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
