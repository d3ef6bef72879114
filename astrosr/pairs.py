"""The pairs file: one HDF5 file of blurred (BLU) / original (ORI) tile pairs, its layout, writer and readers.

This module is the only one that knows the layout; :mod:`astrosr.prepare`
writes through :class:`PairsWriter`, :mod:`astrosr.dataset`,
:mod:`astrosr.train`, :mod:`astrosr.validation` and ``astrosr info`` read
through :func:`read_meta`, :func:`summary` and the helpers below. The
layout, writer and readers are kept together in one module so that a change
of the file format is a change of this file alone.

Layout (``schema_version`` 1), with ``N`` tiles of side ``T`` from ``M``
images, BLU block-averaged by ``S`` (``scale``) and ``P`` distinct PSFs:

``blu`` : float32 (N, T/S, T/S)
    Blurred, noisy tiles, normalised with their image's ORI limits
    ``(x - lo) / (hi - lo)`` and *not* clipped. One tile per chunk, filters
    from :data:`COMPRESSION` (lzf + shuffle by default).
``ori`` : float32 (N, T, T)
    The original tiles, same normalisation, chunks and filters.
``tiles`` : structured (N,), chunks of 4096 rows, :data:`TILE_DTYPE`
    ``image`` (row of ``images``), ``y``, ``x`` (tile origin in ORI pixels),
    ``field`` (``train``, ``val``...), ``psf_index`` (row of ``psfs``),
    ``psf_fwhm`` (measured FWHM of that kernel, px), ``noise_std`` (std of
    the added Gaussian noise, in the image's units).
``images`` : structured (M,), :func:`image_dtype`
    ``path`` (absolute; ``S<w>`` with ``w`` the longest path's UTF-8 length),
    ``sha256``, ``field``, ``ny``, ``nx``, ``lo``/``hi`` (ORI's 0.5 / 99.9
    percentiles), ``blu_lo``/``blu_hi`` (the same of BLU), ``bg_mean``,
    ``bg_median``, ``bg_std`` (ORI's background, sigma-clipped at 3 sigma, 5
    iterations), ``blu_bg_std``, ``hdu``, ``plane`` (-1: a 2-D image).
``psfs`` : float32 (P, k, k)
    Unit-sum kernels, zero-padded to one odd side ``k``; attributes
    ``params`` (JSON list of each kernel's ``PSF.to_dict()``) and ``fwhm``
    (float32 (P,), px).

Root attributes: ``schema_version`` (int), ``astrosr_version``, ``config``
(JSON of the :class:`~astrosr.prepare.PrepareOptions`), ``created`` (UTC,
ISO 8601 to the second), ``scale`` and ``tile`` (ints).

Text columns are fixed-width bytes; :func:`as_text` decodes them.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import sys
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from . import __version__
from .errors import ConfigError, InputError
from .provenance import utc_now
from .files import atomic_path

__all__ = ["SCHEMA_VERSION", "DATASETS", "COMPRESSION", "TILE_DTYPE", "IMAGE_FIELDS", "image_dtype", "as_text",
           "fields", "PairsWriter", "PairsMeta", "read_meta", "summary", "trained_psf", "config_psf", "ImageRecord",
           "field_images"]

#: version of the layout described above; readers refuse any other
SCHEMA_VERSION = 1
#: the datasets every pairs file holds
DATASETS = ("blu", "ori", "tiles", "images", "psfs")
#: h5py filter options of the ``blu``/``ori`` datasets, by ``PrepareOptions.compression``
COMPRESSION = {"lzf": {"compression": "lzf", "shuffle": True},
               "gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
               "none": {}}
#: one row of the ``tiles`` table
TILE_DTYPE = np.dtype([("image", "<i4"), ("y", "<i4"), ("x", "<i4"), ("field", "S16"), ("psf_index", "<i4"),
                       ("psf_fwhm", "<f4"), ("noise_std", "<f4")])
#: the ``images`` table's columns after ``path`` (whose width depends on the paths)
IMAGE_FIELDS = [("sha256", "S64"), ("field", "S16"), ("ny", "<i4"), ("nx", "<i4"), ("lo", "<f8"), ("hi", "<f8"),
                ("blu_lo", "<f8"), ("blu_hi", "<f8"), ("bg_mean", "<f8"), ("bg_median", "<f8"), ("bg_std", "<f8"),
                ("blu_bg_std", "<f8"), ("hdu", "<i4"), ("plane", "<i4")]
_TILES_CHUNK = 4096


def image_dtype(path_width: int) -> np.dtype:
    """The ``images`` table's dtype for paths of at most ``path_width`` bytes."""
    return np.dtype([("path", f"S{path_width}")] + IMAGE_FIELDS)


def as_text(value: Any) -> str:
    """A text column's value (bytes in the file) as ``str``.

    Examples
    --------
    >>> as_text(b"train"), as_text("val")
    ('train', 'val')
    """
    return value.decode() if isinstance(value, bytes) else str(value)


def fields(table: np.ndarray) -> np.ndarray:
    """The ``field`` column of a ``tiles`` or ``images`` table as an array of ``str``."""
    return np.array([as_text(v) for v in table["field"]], dtype=str)


# --- writing -------------------------------------------------------------------


class PairsWriter:
    """Write a pairs file image by image; it appears at ``path`` only when complete.

    Use it as a context manager: :meth:`append` each image's tiles, then
    :meth:`finish` with the PSFs and the config. On any exception (or
    without :meth:`finish`) the temporary file is removed and nothing is
    left at ``path``.

    Parameters
    ----------
    path : str or Path
        Output file, written to a temporary file beside it and renamed.
    tile : int
        ORI tile side ``T``.
    scale : int
        BLU block-average factor ``S`` (BLU tiles are ``T/S``).
    compression : {'lzf', 'gzip', 'none'}
        Filters of ``blu`` and ``ori`` (:data:`COMPRESSION`).
    overwrite : bool
        Replace an existing ``path``; otherwise it is an :class:`InputError`.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> out = Path(tempfile.mkdtemp()) / "pairs.h5"
    >>> with PairsWriter(out, tile=8, scale=1) as w:
    ...     row = ("/data/a.fits", "0" * 64, "train", 8, 8, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.1, 0.1, 0, -1)
    ...     n = w.append(row, np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), [(0, 0, 0, "train", 0, 4.0, 0.1)])
    ...     w.finish(np.full((1, 3, 3), 1 / 9, np.float32), [{"shape": "moffat"}], [4.0], config={"seed": 0})
    >>> read_meta(out).tiles["psf_fwhm"]
    array([4.], dtype=float32)
    """

    def __init__(self, path: str | os.PathLike, *, tile: int, scale: int = 1, compression: str = "lzf",
                 overwrite: bool = False):
        if compression not in COMPRESSION:
            raise ConfigError(f"compression: expected {', '.join(COMPRESSION)}, got {compression!r}")
        self.path = Path(path)
        self.tile, self.scale, self.compression, self.overwrite = int(tile), int(scale), compression, overwrite
        self.images: list[tuple] = []
        self._stack = None
        self._h5 = None
        self._finished = False

    def __enter__(self) -> "PairsWriter":
        import h5py

        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path, overwrite=self.overwrite))
            self._h5 = stack.enter_context(h5py.File(tmp, "w"))
            t, b = self.tile, self.tile // self.scale
            storage = COMPRESSION[self.compression]
            self._blu = self._h5.create_dataset("blu", (0, b, b), maxshape=(None, b, b), chunks=(1, b, b), dtype="f4",
                                                **storage)
            self._ori = self._h5.create_dataset("ori", (0, t, t), maxshape=(None, t, t), chunks=(1, t, t), dtype="f4",
                                                **storage)
            self._tiles = self._h5.create_dataset("tiles", (0,), maxshape=(None,), chunks=(_TILES_CHUNK,),
                                                  dtype=TILE_DTYPE)
        except BaseException:
            # unwind with the error, so atomic_path discards the temporary instead of renaming it
            if not stack.__exit__(*sys.exc_info()):
                raise
        self._stack = stack
        return self

    def __exit__(self, exc_type, exc, tb):
        stack, self._stack = self._stack, None
        if exc_type is None and not self._finished:
            error = RuntimeError(f"{self.path}: PairsWriter closed without finish(); no pairs file written")
            stack.__exit__(RuntimeError, error, None)
            raise error
        return stack.__exit__(exc_type, exc, tb)

    def _room_for(self, nbytes: int) -> None:
        """Fail cleanly (disk full) before HDF5 does: a write HDF5 cannot complete leaves a file it cannot
        close, and the library then crashes the interpreter when it exits."""
        free = shutil.disk_usage(self.path.parent).free
        if free < 1.2 * nbytes + (4 << 20):
            raise OSError(errno.ENOSPC, f"{nbytes / 2**20:.1f} MiB more to write, {free / 2**20:.1f} MiB free")

    @property
    def n_tiles(self) -> int:
        """Tiles appended so far."""
        return len(self._tiles)

    def append(self, image_row: Sequence, blu_tiles: np.ndarray, ori_tiles: np.ndarray,
               tile_rows: Sequence[Sequence]) -> int:
        """Add one image: its ``images`` row, BLU and ORI tiles (normalised) and ``tiles`` rows.

        ``image_row`` holds the ``images`` columns in order (``path`` first, a
        ``str``); ``tile_rows`` one tuple of :data:`TILE_DTYPE` columns per
        tile. Returns the number of tiles added.
        """
        n0, n = len(self._blu), len(tile_rows)
        self._room_for(4 * (np.size(blu_tiles) + np.size(ori_tiles)))
        for ds, data in ((self._blu, blu_tiles), (self._ori, ori_tiles)):
            ds.resize(n0 + n, axis=0)
            ds[n0:] = data
        self._tiles.resize(n0 + n, axis=0)
        self._tiles[n0:] = np.array(tile_rows, dtype=TILE_DTYPE)
        self.images.append(tuple(image_row))
        return n

    def finish(self, kernels: np.ndarray, psf_params: list[dict], psf_fwhm: Sequence[float], *,
               config: dict) -> None:
        """Write the ``images`` table, the ``psfs`` kernels with their parameters, and the root attributes.

        ``config`` is the prepare config as plain data (stored as JSON).
        """
        width = max(len(row[0].encode()) for row in self.images)
        self._h5.create_dataset("images", data=np.array(self.images, dtype=image_dtype(width)))
        psfs = self._h5.create_dataset("psfs", data=kernels)
        psfs.attrs["params"] = json.dumps(psf_params)
        psfs.attrs["fwhm"] = np.array(psf_fwhm, dtype=np.float32)
        self._h5.attrs.update({
            "schema_version": SCHEMA_VERSION,
            "astrosr_version": __version__,
            "config": json.dumps(config),
            "created": utc_now().isoformat(timespec="seconds"),
            "scale": self.scale,
            "tile": self.tile,
        })
        self._finished = True


# --- reading -------------------------------------------------------------------


class PairsMeta(NamedTuple):
    """Everything of a pairs file but the pixels (see the module docstring for the columns)."""

    tiles: np.ndarray
    images: np.ndarray
    psfs: np.ndarray
    attrs: dict
    psf_params: list


def read_meta(path: str | os.PathLike) -> PairsMeta:
    """The tables, kernels and attributes of a pairs file, checked.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    PairsMeta
        ``tiles`` and ``images`` as numpy structured arrays, ``psfs`` the
        float32 kernels ``(P, k, k)``, ``attrs`` the root attributes as a
        dict, ``psf_params`` the kernels' parameters (list of dicts).

    Raises
    ------
    InputError
        Naming the file: not found, not HDF5, a dataset missing, another
        ``schema_version``, or ``blu``/``ori`` and ``tiles`` of different lengths.

    Examples
    --------
    >>> meta = read_meta("pairs.h5")  # doctest: +SKIP
    >>> fields(meta.tiles)  # doctest: +SKIP
    array(['train', 'train', ..., 'val'], dtype='<U5')
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: pairs file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in DATASETS if name not in f]
            if missing:
                raise InputError(f"{path}: not an astrosr pairs file (no '{missing[0]}' dataset)")
            version = f.attrs.get("schema_version")
            if version != SCHEMA_VERSION:
                shown = version.item() if hasattr(version, "item") else version
                raise InputError(f"{path}: pairs schema_version {shown!r} is not supported (expected {SCHEMA_VERSION})")
            tiles = f["tiles"][()]
            if f["blu"].shape[0] != len(tiles) or f["ori"].shape[0] != len(tiles):
                raise InputError(f"{path}: 'blu'/'ori' and 'tiles' disagree on the number of tiles")
            return PairsMeta(tiles, f["images"][()], f["psfs"][()].astype(np.float32), dict(f.attrs),
                             json.loads(f["psfs"].attrs.get("params", "[]")))
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None


def summary(path: str | os.PathLike) -> dict:
    """A pairs file's contents as plain data (what ``astrosr info`` shows).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
        ``path``, ``attrs`` (root attributes as python values), ``config``,
        ``n_tiles``, ``ori_shape``/``blu_shape`` (tile shapes),
        ``compression``, ``tiles_per_field`` (in order of first appearance),
        ``psf_fwhm_range``, ``images`` (list of dicts with their tile counts)
        and ``psfs`` (count, size, params).

    Raises
    ------
    InputError
        Not found, not an HDF5 file, or not an astrosr pairs file.

    Examples
    --------
    >>> summary("pairs.h5")["tiles_per_field"]  # doctest: +SKIP
    {'val': 15, 'train': 80}
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not an HDF5 file ({exc})") from None
    with h5:
        missing = [k for k in DATASETS if k not in h5]
        if missing or "schema_version" not in h5.attrs:
            raise InputError(f"{path}: not an astrosr pairs file (missing {', '.join(missing) or 'schema_version'})")
        tiles = h5["tiles"][:]
        images = h5["images"][:]
        per_image = np.bincount(tiles["image"], minlength=len(images))
        per_field = {}
        for f in tiles["field"]:
            per_field[as_text(f)] = per_field.get(as_text(f), 0) + 1
        return {
            "path": path,
            "attrs": {k: (as_text(v) if isinstance(v, (bytes, str)) else v.item() if hasattr(v, "item") else v)
                      for k, v in h5.attrs.items()},
            "config": json.loads(h5.attrs["config"]),
            "n_tiles": len(tiles),
            "ori_shape": h5["ori"].shape[1:],
            "blu_shape": h5["blu"].shape[1:],
            "compression": h5["ori"].compression,
            "tiles_per_field": per_field,
            "psf_fwhm_range": (float(tiles["psf_fwhm"].min()), float(tiles["psf_fwhm"].max())) if len(tiles) else None,
            "images": [{"path": as_text(r["path"]), "field": as_text(r["field"]), "shape": (int(r["ny"]), int(r["nx"])),
                        "n_tiles": int(per_image[k]), "lo": float(r["lo"]), "hi": float(r["hi"]),
                        "bg_std": float(r["bg_std"]), "blu_lo": float(r["blu_lo"]), "blu_hi": float(r["blu_hi"])}
                       for k, r in enumerate(images)],
            "psfs": {"count": len(h5["psfs"]), "size": h5["psfs"].shape[1:],
                     "params": json.loads(h5["psfs"].attrs.get("params", "[]"))},
        }


def trained_psf(meta: PairsMeta, psf_fwhm: np.ndarray) -> dict:
    """The degradation a model trained on these tiles learns to undo, as ``PSF.to_dict()`` keys.

    One PSF in the file: its parameters. Several (randomised training
    data): the shapes and beta of the file's prepare config with the median
    and range of ``psf_fwhm`` (the FWHM of the tiles trained on), so what
    is recorded is what the model saw, not one arbitrary draw.

    Examples
    --------
    >>> meta = PairsMeta(None, None, None, {"config": '{"psf": {"shape": "moffat,gaussian", "beta": 3.0}}'},
    ...                  [{"shape": "moffat"}, {"shape": "gaussian"}])
    >>> trained_psf(meta, np.array([3.0, 4.0, 5.0]))
    {'shape': 'moffat,gaussian', 'fwhm': 4.0, 'beta': 3.0, 'fwhm_range': [3.0, 5.0]}
    """
    if len(meta.psf_params) == 1:
        return meta.psf_params[0]
    psf = config_psf(json.loads(meta.attrs.get("config", "{}")))
    return {"shape": str(psf.get("shape") or "mixed"), "fwhm": float(np.median(psf_fwhm)),
            "beta": psf.get("beta"), "fwhm_range": [float(psf_fwhm.min()), float(psf_fwhm.max())]}


def config_psf(config: dict) -> dict:
    """The degradation PSF's keys in a file's prepare config (``psf``; files written before it had flat ``psf_*`` keys).

    Examples
    --------
    >>> config_psf({"psf": {"shape": "gaussian", "fwhm": 3.0}})
    {'shape': 'gaussian', 'fwhm': 3.0}
    >>> config_psf({"psf_shape": "moffat", "psf_fwhm": "2.5:5.5", "psf_beta": 3.0, "psf_file": None})
    {'shape': 'moffat', 'fwhm': '2.5:5.5', 'beta': 3.0, 'path': None}
    """
    if isinstance(config.get("psf"), dict):
        return dict(config["psf"])
    return {"shape": config.get("psf_shape"), "fwhm": config.get("psf_fwhm"), "beta": config.get("psf_beta"),
            "path": config.get("psf_file")}


@dataclass(frozen=True)
class ImageRecord:
    """Where one image of the ``images`` table came from, as python values."""

    index: int  #: its row in ``images`` (the ``image`` column of ``tiles``)
    path: Path
    sha256: str
    field: str
    hdu: int
    plane: int | None  #: None for a 2-D image


def field_images(images: np.ndarray, field: str | list[str]) -> list[ImageRecord]:
    """The rows of an ``images`` table in ``field`` (or any of a list of fields), in file order.

    Examples
    --------
    >>> table = np.zeros(2, dtype=image_dtype(8))
    >>> table["path"], table["field"], table["plane"] = [b"/a.fits", b"/b.fits"], [b"train", b"val"], -1
    >>> field_images(table, "val")[0].path, field_images(table, "val")[0].plane
    (PosixPath('/b.fits'), None)
    """
    out = []
    for k in np.flatnonzero(np.isin(fields(images), [field] if isinstance(field, str) else list(field))):
        row = images[k]
        plane = int(row["plane"])
        out.append(ImageRecord(int(k), Path(as_text(row["path"])), as_text(row["sha256"]), as_text(row["field"]),
                               int(row["hdu"]), None if plane < 0 else plane))
    return out
