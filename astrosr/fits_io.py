"""Reading FITS images into float64 arrays with NaN for bad pixels.

One entry point, :func:`read_image`, used by prepare, evaluate and deblur, so
every stage sees a file the same way: the first HDU holding a 2-D image (or
the one asked for), scaled by BSCALE/BZERO, native-endian float64, with every
non-finite or BLANK pixel as NaN (bench-v1's loading rule:
``benchmarks/README.md``, section Loading).

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> import numpy as np
>>> from astropy.io import fits
>>> from astrosr.fits_io import read_image
>>> path = Path(tempfile.mkdtemp()) / "field.fits"
>>> fits.PrimaryHDU(np.random.default_rng(0).normal(100.0, 5.0, (128, 128)).astype(np.float32)).writeto(path)
>>> image = read_image(path)
>>> image.data.dtype, image.data.shape, image.hdu
(dtype('float64'), (128, 128), 0)
"""

from __future__ import annotations

import warnings
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from .errors import InputError

__all__ = ["FitsImage", "read_image", "FITS_SUFFIXES", "STRUCTURAL", "strip_fits_suffix", "pixel_scale"]

#: cards that describe a HDU's on-disk layout (or, DATAMIN/MAX, its stored pixels), not the sky
STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|BSCALE|BZERO|BLANK|"
    r"CHECKSUM|DATASUM|INHERIT|DATAMIN|DATAMAX)$"
)

FITS_SUFFIXES = (".fits.gz", ".fits.fz", ".fit.gz", ".fit.fz", ".fts.gz", ".fts.fz", ".fits", ".fit", ".fts", ".fz")


def strip_fits_suffix(name: str) -> str:
    """``'m51.fits.gz'`` -> ``'m51'`` (the stem every output name is built from).

    Examples
    --------
    >>> strip_fits_suffix("m51.fits.gz"), strip_fits_suffix("M51.FITS"), strip_fits_suffix("cube.fz")
    ('m51', 'M51', 'cube')
    """
    lower = name.lower()
    for suffix in FITS_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass
class FitsImage:
    """A 2-D image read from FITS.

    Attributes
    ----------
    data : ndarray
        float64, native byte order, NaN where the file had no valid value.
    header : astropy.io.fits.Header
        Header of the HDU the image came from (WCS included).
    path : Path
    hdu : int
        Index of that HDU in the file.
    plane : int or None
        Plane taken from a cube, if any.
    """

    data: np.ndarray
    header: fits.Header
    path: Path
    hdu: int
    plane: int | None = None


def _inherit(header, primary):
    """Add the primary header's sky cards an ``INHERIT = T`` extension does not override (FITS 4.0 convention)."""
    for card in primary.cards:
        if card.keyword and card.keyword not in ("COMMENT", "HISTORY") and not STRUCTURAL.match(card.keyword) \
                and card.keyword not in header:
            header.append(card, end=True)


def _pick_hdu(hdul, path, hdu):
    if hdu is None:
        for index, h in enumerate(hdul):
            if h.is_image and h.header.get("NAXIS", 0) >= 2 and h.data is not None:
                return index
        raise InputError(f"{path}: no HDU holds a 2-D image")
    key = int(hdu) if str(hdu).lstrip("-").isdigit() else str(hdu)
    try:
        h = hdul[key]
    except (KeyError, IndexError):
        raise InputError(f"{path}: no HDU {hdu!r} (the file has {len(hdul)} HDUs)") from None
    if not h.is_image or h.data is None:
        raise InputError(f"{path}: HDU {hdu!r} holds no image data")
    return hdul.index_of(key) if isinstance(key, str) else key % len(hdul)


def read_image(
    path: str | Path, *, hdu: int | str | None = None, plane: int | None = None, min_size: int = 128
) -> FitsImage:
    """Read one 2-D image from a FITS file (plain, ``.fits.gz`` or tile-compressed).

    Parameters
    ----------
    path : str or Path
        The FITS file.
    hdu : int or str, optional
        HDU index or EXTNAME. Default: the first HDU holding a 2-D image.
    plane : int, optional
        Plane of a 3-D cube to take (0-based, along the first FITS axis
        beyond the image). A cube without ``plane`` is an error.
    min_size : int, optional
        Smallest allowed side in pixels (default 128, one tile).

    Returns
    -------
    FitsImage

    Raises
    ------
    InputError
        The file is missing, unreadable, not 2-D, smaller than ``min_size``,
        all NaN or constant.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> plane = np.random.default_rng(0).normal(100.0, 5.0, (128, 128)).astype(np.float32)
    >>> plane[3, 4] = np.nan
    >>> path = Path(tempfile.mkdtemp()) / "cube.fits"
    >>> fits.PrimaryHDU(np.stack([plane, plane + 1.0])).writeto(path)
    >>> image = read_image(path, plane=1)
    >>> image.plane, bool(np.isnan(image.data[3, 4]))
    (1, True)
    >>> read_image(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.InputError: ...cube.fits: HDU 0 is a 3-D cube (2, 128, 128); choose a plane (plane=K)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # a damaged file ends in one InputError below; astropy's multi-line notes on it would
            # only bury that line (and a readable file's header quirks are not the user's concern)
            warnings.simplefilter("ignore", VerifyWarning)
            # astropy only warns about a short file, then fails later or reads zeros
            warnings.filterwarnings("error", message="File may have been truncated")
            with fits.open(path, memmap=False) as hdul:
                index = _pick_hdu(hdul, path, hdu)
                h = hdul[index]
                header = h.header.copy()
                if index > 0 and header.get("INHERIT") is True:
                    _inherit(header, hdul[0].header)
                raw = h.data
                blank = header.get("BLANK") if raw is not None and raw.dtype.kind in "iu" else None
                data = np.array(raw, dtype=np.float64)
                # astropy turns BLANK into NaN only when it scales to float; integers it returns
                # (uint16 via BZERO=32768 included) still hold BLANK, offset by BZERO
                if blank is not None:
                    stored = np.asarray(raw, dtype=np.int64) - int(header.get("BZERO", 0))
                    data[stored == int(blank)] = np.nan
    except InputError:
        raise
    except Exception as exc:  # astropy raises many types for a damaged file
        # astropy's first sentence is the diagnosis; the rest is advice on its Python API
        reason = str(exc).strip().splitlines()[0].split(". ")[0].split(", this file")[0] if str(exc).strip() else ""
        raise InputError(f"{path}: not a readable FITS file ({type(exc).__name__}: {reason or 'no detail'})") from None

    if data.ndim > 2:
        squeezed = data.reshape((-1,) + data.shape[-2:]) if plane is not None else np.squeeze(data)
        if plane is None and squeezed.ndim > 2:
            raise InputError(f"{path}: HDU {index} is a {data.ndim}-D cube {data.shape}; choose a plane (plane=K)")
        if plane is not None:
            if not 0 <= plane < squeezed.shape[0]:
                raise InputError(f"{path}: plane {plane} is out of range (the cube has {squeezed.shape[0]} planes)")
            squeezed = squeezed[plane]
        data = squeezed
    elif plane is not None and plane != 0:
        raise InputError(f"{path}: plane {plane} given but HDU {index} is a 2-D image")
    if data.ndim != 2:
        raise InputError(f"{path}: HDU {index} has {data.ndim} dimensions, expected a 2-D image")

    data = np.ascontiguousarray(data, dtype=np.float64)
    data[~np.isfinite(data)] = np.nan
    if min(data.shape) < min_size:
        raise InputError(f"{path}: image {data.shape[1]}x{data.shape[0]} is smaller than one {min_size}x{min_size} tile")
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        raise InputError(f"{path}: every pixel is NaN or infinite")
    if finite.min() == finite.max():
        raise InputError(f"{path}: image is constant ({finite.min():g} everywhere): zero dynamic range")
    return FitsImage(data=data, header=header, path=path, hdu=index, plane=plane)


def pixel_scale(header: fits.Header) -> float | None:
    """The mean pixel scale (arcsec/px) of a header's celestial WCS, or None without a usable one.

    Examples
    --------
    >>> from astropy.io import fits
    >>> header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CDELT1": -1 / 3600, "CDELT2": 1 / 3600})
    >>> round(pixel_scale(header), 6)
    1.0
    >>> pixel_scale(fits.Header()) is None
    True
    """
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():  # astropy's notes on fixing old headers are not the user's concern here
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
        if wcs.naxis == 2:
            return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
    except Exception:  # a broken WCS is the same as none for this purpose
        pass
    return None
