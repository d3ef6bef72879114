"""Small file helpers shared by every stage that writes: atomic outputs and checksums."""

import contextlib
import hashlib
import os
from pathlib import Path

from .errors import InputError

__all__ = ["atomic_path", "sha256_file"]


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
        raise InputError(f"{path}: output exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
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
