"""Data manifests: which files a benchmark uses, where they came from, and their checksums.

Loading, resolving and fetching are kept together in one module: all three
check the same entries against the same data directory, and a rule changed
in one (a checksum, a simulated field's place) must change in all.

A manifest is a small YAML file (``data_manifests/bench_v1.yaml``)::

    name: bench-v1
    images:                      # real images, one per entry
      - {file: M13_blue_0001.fits, field: train, url: http://..., sha256: 431d...}
    psfs:                        # measured PSF kernels (same keys, no field)
      - {file: irac_ch1_flight.fits, url: http://..., sha256: 883a...}
    simulate:                    # fields astrosr simulates itself (no download)
      - {field: simulated, n: 4, seed: 1000, size: 512}

Files are looked for in a data directory (the ``data_dir`` option, else the
``ASTROSR_DATA_DIR`` environment variable). The manifest records the URL a file
came from and the sha256 of the file as it sits in the data directory; a
``.bz2`` download is decompressed before it is verified. Simulated fields are deterministic in their seed:
they are taken from the data directory when present, otherwise generated once
into a cache directory (``ASTROSR_CACHE_DIR``, default ``~/.cache/astrosr``).
bench-v1's fields are ``benchmarks/README.md``, section Fields.

Examples
--------
>>> from astrosr.manifest import default_manifest, load_manifest
>>> manifest = load_manifest(default_manifest())
>>> manifest.name, manifest.fields
('bench-v1', ['train', 'val', 'other_sky', 'simulated'])
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .config import from_dict, load_yaml
from .errors import ConfigError, DataError, InputError
from .files import atomic_path, sha256_file
from .progress import report
from .psf import PSF

log = logging.getLogger(__name__)

__all__ = [
    "ImageEntry",
    "PsfEntry",
    "SimulateEntry",
    "Manifest",
    "Source",
    "load_manifest",
    "resolve_psf",
    "default_manifest",
    "data_dir_from",
    "cache_dir",
    "resolve",
    "psf_path",
    "fetch",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,15}$")


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One real image: its file name in the data directory, field, source URL and sha256."""

    file: str
    field: str
    url: str
    sha256: str
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class PsfEntry:
    """A measured PSF kernel file (a PSF ``path`` that is this name finds it in the data directory)."""

    file: str
    url: str
    sha256: str
    pixscale: float | None = None
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class SimulateEntry:
    """A field simulated by :func:`astrosr.simulate.simulate_fields` (``n`` images from ``seed``)."""

    field: str
    n: int = 4
    seed: int = 1000
    size: int = 512

    def files(self) -> list[str]:
        """File names the simulation writes, in order.

        Examples
        --------
        >>> SimulateEntry(field="simulated", n=2, seed=1000).files()
        ['sim_s1000_000.fits', 'sim_s1000_001.fits']
        """
        from .simulate import sim_name

        return [sim_name(self.seed, i) for i in range(self.n)]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A loaded, validated manifest."""

    path: Path
    name: str
    images: tuple
    psfs: tuple = ()
    simulate: tuple = ()
    description: str | None = None

    @property
    def fields(self) -> list[str]:
        """Field names in first-appearance order."""
        names = [e.field for e in self.images] + [s.field for s in self.simulate]
        return list(dict.fromkeys(names))


class Source(NamedTuple):
    """An image to prepare: its path and field (a ``(path, field)`` pair)."""

    path: Path
    field: str


def _check_entry(entry, where):
    if not _SHA256.match(entry.sha256):
        raise ConfigError(f"{where}.sha256: expected 64 lowercase hex digits, got {entry.sha256!r}")
    if "/" in entry.file or entry.file in ("", ".", ".."):
        raise ConfigError(f"{where}.file: expected a bare file name, got {entry.file!r}")
    if "://" not in entry.url:
        raise ConfigError(f"{where}.url: expected a URL (scheme://...), got {entry.url!r}")


def _check_field(field, where):
    if not _FIELD.match(field):
        raise ConfigError(f"{where}.field: expected a short lowercase name (a-z, 0-9, _), got {field!r}")


def _entries(raw, kind, path, section):
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: {section}: expected a list of entries, got {type(raw).__name__}")
    entries = []
    for i, item in enumerate(raw):
        where = f"{path}: {section}[{i}]"
        if isinstance(item, dict) and isinstance(item.get("sha256"), (int, float)) and not isinstance(item["sha256"], bool):
            # YAML reads an unquoted all-digit sum (or one like 1e5...) as a number, dropping its leading zeros
            raise ConfigError(f"{where}.sha256: YAML read {item['sha256']!r} as a number; write the sum as a quoted "
                              "string of 64 hex digits ('00...')")
        entry = from_dict(kind, item, where=where)
        if kind is not SimulateEntry:
            _check_entry(entry, where)
        if kind is not PsfEntry:
            _check_field(entry.field, where)
        if kind is SimulateEntry and (entry.n < 1 or entry.size < 128):
            raise ConfigError(f"{where}: n must be >= 1 and size >= 128, got n={entry.n}, size={entry.size}")
        entries.append(entry)
    return tuple(entries)


def load_manifest(path: str | Path) -> Manifest:
    """Load and validate a manifest YAML.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Manifest

    Raises
    ------
    ConfigError
        Missing file, bad YAML, an unknown or mistyped key (named), a
        malformed sha256, or a file listed twice.

    Examples
    --------
    >>> manifest = load_manifest(default_manifest())
    >>> [e.file for e in manifest.images if e.field == "val"]
    ['M13_blue_0005.fits', 'reprojected_sdss_i.fits']
    >>> load_manifest("no/such.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: no/such.yaml: manifest not found (looked for ...)
    """
    path = _manifest_path(Path(path))
    data = load_yaml(path)
    known = {"name", "description", "images", "psfs", "simulate"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    if not isinstance(data.get("name"), str):
        raise ConfigError(f"{path}: name: expected a string naming the manifest, got {data.get('name')!r}")
    images = _entries(data.get("images"), ImageEntry, path, "images")
    psfs = _entries(data.get("psfs"), PsfEntry, path, "psfs")
    simulate = _entries(data.get("simulate"), SimulateEntry, path, "simulate")
    names = [e.file for e in images + psfs] + [f for s in simulate for f in s.files()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: {duplicates[0]}: listed more than once")
    return Manifest(path=path, name=data["name"], images=images, psfs=psfs, simulate=simulate,
                    description=data.get("description"))


def _manifest_path(path: Path) -> Path:
    """A manifest given by path: as given (relative to the working directory), else in the astrosr checkout.

    So ``data_manifests/bench_v1.yaml`` works from any directory of a
    source install; a path found nowhere is an error naming where it looked.
    """
    if path.is_file():
        return path
    shipped = Path(__file__).resolve().parents[1] / path
    if not path.is_absolute() and shipped.is_file():
        return shipped
    tried = list(dict.fromkeys([str(path.resolve())] + ([str(shipped)] if not path.is_absolute() else [])))
    raise ConfigError(f"{path}: manifest not found (looked for {' and '.join(tried)})")


def default_manifest() -> Path:
    """``data_manifests/bench_v1.yaml`` of the current directory, else of the astrosr checkout.

    So evaluating the ``val`` field works from any directory of a source
    install; the returned path may not exist (then loading it names it).

    Examples
    --------
    >>> default_manifest().name
    'bench_v1.yaml'
    """
    local = Path("data_manifests") / "bench_v1.yaml"
    shipped = Path(__file__).resolve().parents[1] / local
    return local if local.is_file() or not shipped.is_file() else shipped


def _data_dir_setting(data_dir):
    """``data_dir`` if given, else ``$ASTROSR_DATA_DIR``, as a Path (it may not exist yet)."""
    data_dir = data_dir or os.environ.get("ASTROSR_DATA_DIR")
    if not data_dir:
        raise ConfigError("data_dir: no data directory given and ASTROSR_DATA_DIR is not set")
    return Path(data_dir)


def data_dir_from(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$ASTROSR_DATA_DIR``.

    Raises
    ------
    ConfigError
        Neither is set, or the directory does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> here = tempfile.mkdtemp()
    >>> data_dir_from(here) == Path(here)
    True
    """
    data_dir = _data_dir_setting(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"{data_dir}: data directory not found")
    return data_dir


def cache_dir() -> Path:
    """Where generated data (simulated fields) is kept: ``$ASTROSR_CACHE_DIR`` or ``~/.cache/astrosr``.

    Examples
    --------
    >>> isinstance(cache_dir(), Path)
    True
    """
    return Path(os.environ.get("ASTROSR_CACHE_DIR") or Path.home() / ".cache" / "astrosr")


def _verify(path, entry, *, shown=None):
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise DataError(f"{shown or path}: sha256 {actual} does not match the manifest's {entry.sha256}")


def _existing(path, entry, manifest, data_dir, verify):
    if not path.is_file():
        raise DataError(f"{path}: missing; download it from {entry.url} "
                        f"(or run: astrosr fetch {manifest.path} --data-dir {data_dir})")
    if verify:
        _verify(path, entry)
    return path


def _simulated(spec, data_dir):
    """Paths of a simulated field: the data directory's copies, else generated into the cache."""
    from .simulate import write_simulated

    paths = []
    for index, name in enumerate(spec.files()):
        path = data_dir / name
        if not path.is_file():
            path = cache_dir() / "simulated" / name
            if not path.is_file():
                write_simulated(path, seed=spec.seed, index=index, size=spec.size)
        paths.append(path)
    return paths


def resolve(
    manifest: Manifest | str | Path,
    data_dir: str | Path | None = None,
    fields: list[str] | None = None,
    *,
    verify: bool = True,
) -> list[Source]:
    """The images of ``fields`` as :class:`Source` pairs, checked against the manifest.

    Parameters
    ----------
    manifest : Manifest or str or Path
    data_dir : str or Path, optional
        Default ``$ASTROSR_DATA_DIR``.
    fields : list of str, optional
        Fields to take, in manifest order (default: all).
    verify : bool
        Check every real file's sha256 (default True).

    Returns
    -------
    list of Source

    Raises
    ------
    ConfigError
        An unknown field.
    DataError
        A missing file (named with its URL) or a checksum mismatch (both sums).

    Examples
    --------
    >>> resolve(default_manifest(), "/data/bench_v1", ["val"])  # doctest: +SKIP
    [Source(path=PosixPath('/data/bench_v1/M13_blue_0005.fits'), field='val'),
     Source(path=PosixPath('/data/bench_v1/reprojected_sdss_i.fits'), field='val')]
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    data_dir = data_dir_from(data_dir)
    wanted = list(manifest.fields if fields is None else fields)
    for field in wanted:
        if field not in manifest.fields:
            raise ConfigError(f"{manifest.path}: field {field!r} not in the manifest "
                              f"(fields: {', '.join(manifest.fields)})")
    sources = []
    for field in wanted:
        for entry in manifest.images:
            if entry.field == field:
                path = _existing(data_dir / entry.file, entry, manifest, data_dir, verify)
                sources.append(Source(path, field))
        for spec in manifest.simulate:
            if spec.field == field:
                sources.extend(Source(p, field) for p in _simulated(spec, data_dir))
    return sources


def psf_path(manifest: Manifest, name: str, data_dir: str | Path | None = None, *, verify: bool = True) -> Path:
    """Path of the manifest's PSF file ``name`` in the data directory (checked like images).

    Raises
    ------
    ConfigError
        The manifest has no PSF of that name.
    DataError
        The file is missing or its sha256 does not match.

    Examples
    --------
    >>> psf_path(load_manifest(default_manifest()), "irac_ch1_flight.fits", "/data/bench_v1")  # doctest: +SKIP
    PosixPath('/data/bench_v1/irac_ch1_flight.fits')
    """
    data_dir = data_dir_from(data_dir)
    for entry in manifest.psfs:
        if entry.file == name:
            return _existing(data_dir / entry.file, entry, manifest, data_dir, verify)
    known = ", ".join(e.file for e in manifest.psfs) or "none"
    raise ConfigError(f"{manifest.path}: no PSF named {name!r} (PSFs: {known})")


def resolve_psf(psf: PSF, manifest: Manifest | None, data_dir: str | Path | None = None) -> PSF:
    """``psf``, with a file PSF whose path is not a file looked up by name among the manifest's PSFs.

    So ``--psf irac_ch1_flight.fits`` (prepare, evaluate) finds the kernel
    in the data directory, checked like the images.

    Raises
    ------
    InputError
        Neither a file nor a PSF the manifest names.

    Examples
    --------
    >>> from astrosr.psf import PSF
    >>> resolve_psf(PSF(fwhm=3.0), None)  # analytic PSFs pass through
    PSF(shape='moffat', fwhm=3.0, beta=3.0, radius=None, path=None, pixscale=None, image_pixscale=None, size=41)
    """
    if psf.shape != "file" or Path(psf.path).is_file():
        return psf
    names = [e.file for e in manifest.psfs] if manifest is not None else []
    if psf.path not in names:
        where = f"in {manifest.path}" if manifest is not None else "in any manifest"
        raise InputError(f"{psf.path}: PSF file not found, nor a PSF named {where} ({', '.join(names) or 'none'})")
    return dataclasses.replace(psf, path=str(psf_path(manifest, psf.path, data_dir)))


def _download(entry, target):
    """Download ``entry.url`` to ``target`` (decompressing .bz2), verify, and move into place."""
    from astropy.utils.data import download_file

    try:
        tmp = Path(download_file(entry.url, cache=False, show_progress=False, timeout=60))
    except Exception as exc:  # urllib/http/socket errors all mean the same to the user
        raise DataError(f"{target}: download from {entry.url} failed ({type(exc).__name__}: {exc})") from None
    try:
        with atomic_path(target) as out:
            if entry.url.endswith(".bz2") and not target.name.endswith(".bz2"):
                try:
                    with bz2.open(tmp, "rb") as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except OSError as exc:
                    raise DataError(f"{target}: {entry.url} is not valid bzip2 data ({exc})") from None
            else:
                shutil.copyfile(tmp, out)
            _verify(out, entry, shown=f"{target} (downloaded from {entry.url})")
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    manifest: Manifest | str | Path,
    data_dir: str | Path | None,
    *,
    fields: list[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[tuple[Path, str]]:
    """Make ``data_dir`` complete: download missing files, verify all, write simulated fields.

    Parameters
    ----------
    manifest : Manifest or str or Path
    data_dir : str or Path or None
        Created if missing; None means ``$ASTROSR_DATA_DIR``.
    fields : list of str, optional
        Only the images of these fields (PSFs are always fetched).
    progress : callable, optional
        ``progress('files', done, total)`` after each file (:mod:`astrosr.progress`).

    Returns
    -------
    list of (Path, str)
        Each file with what happened: ``'present'``, ``'downloaded'`` or ``'simulated'``.

    Raises
    ------
    DataError
        A download failed or a file's sha256 does not match (both sums named).

    Examples
    --------
    A manifest of simulated fields only needs no network:

    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "sims.yaml").write_text("{name: sims, simulate: [{field: val, n: 1, seed: 500, size: 128}]}")
    >>> [(path.name, what) for path, what in fetch(root / "sims.yaml", root / "data")]
    [('sim_s500_000.fits', 'simulated')]
    >>> [(source.path.name, source.field) for source in resolve(root / "sims.yaml", root / "data")]
    [('sim_s500_000.fits', 'val')]
    """
    from .simulate import write_simulated

    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    data_dir = _data_dir_setting(data_dir)  # fetch creates it
    with _writable(data_dir):
        data_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(manifest.fields if fields is None else fields)
    unknown = sorted(wanted - set(manifest.fields))
    if unknown:
        raise ConfigError(f"{manifest.path}: field {unknown[0]!r} not in the manifest "
                          f"(fields: {', '.join(manifest.fields)})")
    entries = [e for e in manifest.images if e.field in wanted] + list(manifest.psfs)
    sims = [(s, i, name) for s in manifest.simulate if s.field in wanted for i, name in enumerate(s.files())]
    done = []
    total = len(entries) + len(sims)
    for entry in entries:
        target = data_dir / entry.file
        if target.is_file():
            _verify(target, entry)
            done.append((target, "present"))
        else:
            log.info("downloading %s", entry.url)
            with _writable(target):
                _download(entry, target)
            done.append((target, "downloaded"))
        report(progress, "files", len(done), total)
    for spec, index, name in sims:
        target = data_dir / name
        if target.is_file():
            done.append((target, "present"))
        else:
            with _writable(target):
                write_simulated(target, seed=spec.seed, index=index, size=spec.size)
            done.append((target, "simulated"))
        report(progress, "files", len(done), total)
    return done


@contextlib.contextmanager
def _writable(target):
    """A read-only or full data directory is the user's to fix: one line, no traceback."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"{target}: cannot write ({exc.strerror or exc})") from None
