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
import errno
import glob
import hashlib
import os
import re
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import InputError

__all__ = ["atomic_path", "check_output", "write_failure", "remove_stale_temporaries", "make_dir", "check_not_input",
           "sha256_file", "sigterm_as_interrupt"]


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
    # permission bits do not tell everything (root in /proc, a read-only mount, a full disk's inodes): try
    probe = path / f".astrosr-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except FileExistsError:
        pass
    except OSError as exc:
        raise InputError(f"{path}: cannot write in the output directory ({exc.strerror or exc})") from None
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


#: errno values that mean "this output cannot be written here": the user's to fix, one line, exit 2
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                errno.ENOTDIR, errno.EISDIR, errno.EIO}
#: h5py and some C libraries report errno only in their message ("... errno = 28, error message = ...")
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")
#: the temporary beside an output: ``.<name>.astrosr-<host>-<pid>.tmp``, so a rerun knows whose it is
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.astrosr-(?P<host>[^-]+(?:-[^-]+)*)-(?P<pid>\d+)\.tmp$")


def write_failure(exc: BaseException, path: str | Path) -> InputError | None:
    """The one-line InputError for a failed write of ``path``, or None when ``exc`` is not a write failure.

    Examples
    --------
    >>> write_failure(OSError(28, "No space left on device"), "out.h5")
    InputError('out.h5: cannot write (No space left on device); nothing was kept there')
    >>> write_failure(ValueError("bug"), "out.h5") is None
    True
    """
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code is None:
        found = _ERRNO_IN_TEXT.search(str(exc))
        code = int(found.group(1)) if found else None
    if code not in WRITE_ERRNOS:
        return None
    return InputError(f"{path}: cannot write ({os.strerror(code)}); nothing was kept there")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.astrosr-{socket.gethostname()}-{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries of output ``path`` left by dead astrosr processes of this host (a kill -9).

    A temporary names the host and process that write it, so a live writer
    (on this host, or any writer on another host of a shared file system)
    is never touched. Returns the files removed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "pairs.h5"
    >>> import socket
    >>> dead = out.with_name(f".pairs.h5.astrosr-{socket.gethostname()}-999999999.tmp")
    >>> _ = dead.write_bytes(b"half")
    >>> [p.name for p in remove_stale_temporaries(out)] == [dead.name]
    True
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    host = socket.gethostname()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.astrosr-*.tmp"):
        match = _TEMPORARY.match(candidate.name)
        if not match or match["name"] != path.name or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def check_output(path: str | Path, *, overwrite: bool = False) -> Path:
    """Check before any work that output file ``path`` can be written; its directory is created.

    Raises
    ------
    InputError
        ``path`` exists (without ``overwrite``), a directory stands there, or
        its directory cannot be created or written.

    Examples
    --------
    >>> check_output("/proc/astrosr/out.h5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.InputError: /proc/astrosr: cannot create the output directory (...)
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a directory stands where the output file goes; move it or choose another name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output exists (overwrite=True replaces it)")
    make_dir(path.parent)  # it is writable from here on, so an existing output can be replaced
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception (Ctrl-C included) the temporary file is removed, so
    nothing half-written ever sits at ``path``; a write that fails (disk
    full, no permission, read-only file system) is one InputError naming
    ``path``. Temporaries of ``path`` left by a dead process of this host
    (``kill -9``) are removed first.

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
        ``path`` exists and ``overwrite`` is False, or it cannot be written.

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
    path = check_output(path, overwrite=overwrite)
    remove_stale_temporaries(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        failure = write_failure(exc, path)
        if failure is None:
            raise
        raise failure from None
    finally:
        with contextlib.suppress(OSError):
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
