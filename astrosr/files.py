"""Small file helpers shared by every stage that writes: atomic outputs and checksums.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from astrosr.files import atomic_path, sha256_file
>>> path = Path(tempfile.mkdtemp()) / "out" / "notes.txt"
>>> with atomic_path(path) as tmp:
...     _ = tmp.write_text("done")
>>> sha256_file(path)[:12]
'a4c3ed04a95a'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import InputError

__all__ = ["atomic_path", "make_dir", "check_not_input", "sha256_file", "sigterm_as_interrupt"]


def make_dir(path: str | Path) -> Path:
    """Create directory ``path`` (and its parents) or raise a one-line InputError naming it.

    A path under a regular file, a read-only file system or a directory
    without write permission is the user's to fix, not a traceback.

    Returns
    -------
    Path
        ``path``, which now exists and is writable.

    Raises
    ------
    InputError
        ``path`` is a file, cannot be created, or is not writable.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> make_dir(Path(tempfile.mkdtemp()) / "a" / "b").is_dir()
    True
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


def check_not_input(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Raise InputError if output ``out`` is one of the ``inputs`` (so overwriting cannot destroy an input).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "image.fits"
    >>> _ = path.write_bytes(b"")
    >>> check_not_input(path.parent / "other.fits", [path])  # no output yet: nothing to protect
    >>> check_not_input(path, [path])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.InputError: ...image.fits: output is also an input (...image.fits); choose another output name
    """
    out = Path(out)
    if not out.exists():
        return
    for path in inputs:
        path = Path(path)
        if path.exists() and os.path.samefile(out, path):
            raise InputError(f"{out}: output is also an input ({path}); choose another output name")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception (Ctrl-C included) the temporary file is removed, so
    nothing half-written ever sits at ``path``.

    Parameters
    ----------
    path : str or Path
        Final output path.
    overwrite : bool, optional
        If False (default) an existing ``path`` is an error.

    Yields
    ------
    Path
        The temporary path to write (its parent directory is created).

    Raises
    ------
    InputError
        ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "table.csv"
    >>> with atomic_path(path) as tmp:
    ...     _ = tmp.write_text("a,b")
    >>> path.read_text()
    'a,b'
    >>> with atomic_path(path) as tmp:  # doctest: +ELLIPSIS
    ...     pass
    Traceback (most recent call last):
    ...
    astrosr.errors.InputError: ...table.csv: output exists (overwrite=True replaces it)
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


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time (memory stays flat for any size).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "empty"
    >>> _ = path.write_bytes(b"")
    >>> sha256_file(path)
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A plain ``kill`` unwinds like Ctrl-C inside this block, so temporary outputs are removed.

    Only in the main thread (signal handlers can be set nowhere else).

    Examples
    --------
    >>> with sigterm_as_interrupt():
    ...     pass
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
