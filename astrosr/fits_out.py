"""The deblurred FITS file: its name, header, WCS, provenance cards and extensions.

Kept together as one module: everything that decides what a deblurred FITS file holds.

An input ``<stem>.fits`` (``.fits.gz``, ``.fz``...) becomes
``OUT/<stem>_deblur.fits``, or ``OUT/<stem>_deblur.fits.fz`` when
compressed (:func:`output_path`). The file holds:

* the restored image, float32: the primary HDU, or HDU 1 of a ``.fz``
  (lossless GZIP_2 tile compression, no float quantisation);
* the input header less its structural cards (:func:`clean_header`), the
  WCS rescaled for a model that adds pixels (:func:`rescale_wcs`), and the
  ``ASR*`` provenance cards plus HISTORY lines (:func:`add_provenance`);
* a ``MASK`` extension (uint8, 1 where the input pixel was NaN) and, with
  posterior samples, an ``UNCERT`` extension (float32, the image's units),
  both carrying the image's WCS cards (:func:`wcs_cards`).

An existing output is skipped only when its cards name the same model
sha256, the same PSF and the same consistency, samples and overlap
settings (:func:`existing_matches`).

Examples
--------
>>> from astrosr.fits_out import output_path
>>> output_path("raw/m51.fits.gz", "out").as_posix()
'out/m51_deblur.fits'
>>> output_path("raw/m51.fits", "out", compress=True).as_posix()
'out/m51_deblur.fits.fz'
"""

from __future__ import annotations

import functools
import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from . import __version__
from .provenance import utc_now
from .files import atomic_path
from .fits_io import STRUCTURAL, FitsImage, strip_fits_suffix

__all__ = [
    "WCS_CARD",
    "BEYOND_IMAGE_AXES",
    "output_path",
    "clean_header",
    "rescale_wcs",
    "wcs_cards",
    "add_provenance",
    "existing_matches",
    "write_output", "standard_cards", "VALUE_RANGE"]

_NUMBER_THEN_TEXT = re.compile(r"^(?P<value>[-+]?(\d+\.?\d*|\.\d+)([EeDd][-+]?\d+)?)\s*(?P<rest>[^\d\s'].*)$")

#: value-range cards of the input that do not describe the restored float32 image (dropped from outputs)
VALUE_RANGE = re.compile(r"^(SATURATE|SATLEVEL|SATURATN|MAXLIN|LINLIMIT|NONLIN|IRAF-MAX|IRAF-MIN|IRAF-BPX|IRAFTYPE)$")

#: the WCS cards copied into the UNCERT and MASK extensions so viewers align them
WCS_CARD = re.compile(
    r"^(WCSAXES|WCSNAME|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|"
    r"LONPOLE|LATPOLE|EQUINOX|EPOCH|RADESYS|RADECSYS|MJD-OBS|DATE-OBS|"
    r"(A|B|AP|BP)_ORDER|(A|B|AP|BP)_\d+_\d+|A_DMAX|B_DMAX)$"
)

#: the WCS cards of axes 3 and up, dropped when the output is one plane of a cube
BEYOND_IMAGE_AXES = re.compile(r"^(WCSAXES|CTYPE[3-9]|CRVAL[3-9]|CRPIX[3-9]|CDELT[3-9]|CUNIT[3-9]|CROTA[3-9]|"
                               r"CD[1-9]_[3-9]|CD[3-9]_[1-9]|PC[1-9]_[3-9]|PC[3-9]_[1-9])$")

_SIP = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")


def output_path(path: str | Path, out_dir: str | Path, *, compress: bool = False, hdu: int | str | None = None,
                plane: int | None = None) -> Path:
    """``OUT/<stem>[_<EXTNAME or hduN>][_p<K>]_deblur.fits`` (``.fits.fz`` with ``compress``) for an input ``path``.

    The stem is the input's name less its FITS suffix (``.fits``, ``.fits.gz``,
    ``.fz``...), so ``m51.fits.gz`` and ``m51.fz`` both give ``m51_deblur.fits``.
    An HDU or plane asked for is part of the name, so two HDUs or planes of
    one file never share an output.

    Examples
    --------
    >>> output_path("x/m51.fz", "o").as_posix()
    'o/m51_deblur.fits'
    >>> output_path("x/mef.fits", "o", hdu="SCI1").name, output_path("x/cube.fits", "o", hdu=0, plane=3).name
    ('mef_SCI1_deblur.fits', 'cube_hdu0_p3_deblur.fits')
    """
    parts = [strip_fits_suffix(Path(path).name)]
    if hdu is not None:
        parts.append(f"hdu{hdu}" if isinstance(hdu, int) else "".join(c if c.isalnum() or c in "-." else "-" for c in hdu))
    if plane is not None:
        parts.append(f"p{plane}")
    suffix = "_deblur.fits.fz" if compress else "_deblur.fits"
    return Path(out_dir) / ("_".join(parts) + suffix)


def clean_header(header: fits.Header, *, image_axes_only: bool = False) -> fits.Header:
    """A copy of the input's cards less those describing its on-disk layout.

    Gone are SIMPLE, XTENSION, BITPIX, NAXIS*, EXTEND, PCOUNT, GCOUNT, GROUPS,
    BSCALE, BZERO, BLANK, CHECKSUM, DATASUM, INHERIT and DATAMIN/DATAMAX
    (the input's pixel range, wrong for the restored image); astropy writes
    the output's own. The cards of :data:`VALUE_RANGE` go too: the input's
    saturation and linearity levels and IRAF's pixel range and type describe
    the detector's counts, not the float32 restoration (a photometry tool
    would mask the wrong pixels by them). With ``image_axes_only`` (a plane cut from a cube) the
    WCS cards of the axes beyond the image go too, so the 2-D output has a
    2-D WCS.

    Examples
    --------
    >>> from astropy.io import fits
    >>> header = fits.Header({"NAXIS": 3, "DATAMIN": 0.0, "OBJECT": "M51", "CTYPE3": "FREQ"})
    >>> list(clean_header(header))
    ['OBJECT', 'CTYPE3']
    >>> list(clean_header(header, image_axes_only=True))
    ['OBJECT']
    """
    out = fits.Header()
    for card in header.cards:
        if STRUCTURAL.match(card.keyword) or VALUE_RANGE.match(card.keyword) \
                or (image_axes_only and BEYOND_IMAGE_AXES.match(card.keyword)):
            continue
        out.append(card, end=True)
    return out


def standard_cards(header: fits.Header) -> tuple[fits.Header, list[str], list[str]]:
    """``(header, fixed, dropped)``: the cards that break the FITS standard fixed as astropy can, the rest dropped.

    Real headers carry such cards (an IRAF/NOAO ``CD1_1 = 7.2E-05 Degrees/pixel``
    with its comment inside the value); writing them would fail after all the
    work. Every other card is kept as it is.

    Examples
    --------
    >>> from astropy.io import fits
    >>> header = fits.Header([fits.Card.fromstring("CD2_2   = 7.2E-05 Degrees/pixel"), ("OBJECT", "M51")])
    >>> fixed_header, fixed, dropped = standard_cards(header)
    >>> fixed, dropped, fixed_header["CD2_2"]
    (['CD2_2'], [], 7.2e-05)
    """
    from astropy.io.fits.verify import VerifyError

    out, fixed, dropped = fits.Header(), [], []
    for card in header.cards:
        try:
            card.verify("exception")
            out.append(card, end=True)
            continue
        except (VerifyError, ValueError):
            pass
        try:
            raw = card.image[10:].strip() if card.image[8:10] == "= " else ""
            number = _NUMBER_THEN_TEXT.match(raw)
            if number:  # a number with its comment run into the value: the number, and the rest as the comment
                repaired = fits.Card(card.keyword, float(number["value"].replace("D", "E").replace("d", "e")),
                                     number["rest"].lstrip("/ ").strip())
            else:
                repaired = fits.Card.fromstring(card.image)
                repaired.verify("silentfix")
            repaired.verify("exception")
            _ = repaired.value  # a value astropy cannot parse even now is not kept
            out.append(repaired, end=True)
            fixed.append(card.keyword)
        except (VerifyError, ValueError):
            dropped.append(card.keyword)
    return out, fixed, dropped


def rescale_wcs(header: fits.Header, scale: int) -> fits.Header:
    """Rescale, in place, the pixel side of a WCS for an image with ``scale`` times the pixels per axis.

    Old 1-based pixel ``p`` lands at ``S (p - 1/2) + 1/2``: CRPIX moves that
    way, CDELT/CD shrink by S, and SIP coefficients of order p+q scale by
    ``S^(1-p-q)`` (their pixel offsets grow by S, their output too).

    Examples
    --------
    >>> from astropy.io import fits
    >>> header = rescale_wcs(fits.Header({"CRPIX1": 10.0, "CDELT1": -0.001}), 2)
    >>> header["CRPIX1"], header["CDELT1"]
    (19.5, -0.0005)
    """
    if scale == 1:
        return header
    for axis in (1, 2):
        if f"CRPIX{axis}" in header:
            header[f"CRPIX{axis}"] = scale * (header[f"CRPIX{axis}"] - 0.5) + 0.5
        if f"CDELT{axis}" in header:
            header[f"CDELT{axis}"] = header[f"CDELT{axis}"] / scale
        for j in (1, 2):
            if f"CD{axis}_{j}" in header:
                header[f"CD{axis}_{j}"] = header[f"CD{axis}_{j}"] / scale
    for key in list(header.keys()):
        match = _SIP.match(key)
        if match:
            p, q = int(match.group(2)), int(match.group(3))
            header[key] = header[key] * float(scale) ** (1 - p - q)
    for key in ("A_DMAX", "B_DMAX"):
        if key in header:
            header[key] = header[key] * scale
    return header


def wcs_cards(header: fits.Header) -> fits.Header:
    """The WCS cards of ``header`` (:data:`WCS_CARD`), for an extension that must align with the image.

    Examples
    --------
    >>> from astropy.io import fits
    >>> list(wcs_cards(fits.Header({"OBJECT": "M51", "CTYPE1": "RA---TAN", "CRVAL1": 202.47})))
    ['CTYPE1', 'CRVAL1']
    >>> dict(wcs_cards(fits.Header({"CTYPE1": "RA---TAN", "EPOCH": 2000.0})))
    {'CTYPE1': 'RA---TAN', 'EQUINOX': 2000.0}
    """
    out = fits.Header()
    for card in header.cards:
        if not WCS_CARD.match(card.keyword):
            continue
        if card.keyword == "EPOCH":
            # the deprecated spelling of EQUINOX (a FITS validator warning in every HDU it stands in): the
            # extensions say it the standard way, and only where the image has no EQUINOX of its own
            if "EQUINOX" not in header:
                out.append(fits.Card("EQUINOX", card.value, "equinox of the coordinates (the input's EPOCH)"), end=True)
            continue
        out.append(card, end=True)
    return out


def add_provenance(
    header: fits.Header,
    *,
    image: FitsImage,
    info: dict[str, Any],
    psf_id: str,
    trained_for: str,
    consistency: bool,
    overlap: int,
    samples: int,
    scale: int,
    lo: float,
    hi: float,
    cards: list[tuple[str, Any, str]] = (),
    history: list[str] = (),
) -> fits.Header:
    """Add, in place, astrosr's keyword and HISTORY cards: what made this image, from what.

    Keywords: ASRVERS, ASRDATE (UTC), ASRINPUT, ASRINHDU, ASRMODEL, ASRMSHA
    (sha256 of the weights file), ASRPSF (``psf_id``), ASRTRAIN, ASRCONS,
    ASROVLP, ASRSAMP, with draws ASRUSCAL, ASRSCALE, ASRLO / ASRHI (the input percentiles 0.5 /
    99.9 the model was normalised with) and, for a cube's plane, ASRPLANE.
    Cards of an input deblurred before are replaced, not repeated. The
    HISTORY lines say the same in words and hold the full sha256 on a line
    of its own.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The output header, changed in place.
    image : astrosr.fits_io.FitsImage
        The input (its name, HDU and plane are recorded).
    info : dict
        The model's info from :func:`astrosr.checkpoint.load_model`
        (``sha256``, ``model``, ``path``).
    psf_id : str
        :meth:`astrosr.psf.PSF.identity` of the PSF used.
    trained_for : str
        One line on the degradation the model was trained for.
    consistency, overlap, samples
        The run's settings.
    scale : int
        Output pixels per input pixel per axis.
    lo, hi : float
        The input's normalisation limits.
    cards, history : list
        More ``(key, value, comment)`` cards and HISTORY lines: the image's
        PSF, the kernel removed and the output PSF
        (:meth:`astrosr.psf_matching.PSFMatch.cards`).

    Returns
    -------
    astropy.io.fits.Header
        ``header``.

    Examples
    --------
    >>> from pathlib import Path
    >>> from astropy.io import fits
    >>> from astrosr.fits_io import FitsImage
    >>> image = FitsImage(data=None, header=fits.Header(), path=Path("m51.fits"), hdu=0)
    >>> info = {"sha256": "ab" * 32, "model": "resvae", "path": "best.pt"}
    >>> header = add_provenance(fits.Header(), image=image, info=info, psf_id="Moffat FWHM=4px beta=3 41x41",
    ...                         trained_for="Moffat FWHM=4px beta=3 41x41, scale 1", consistency=True,
    ...                         overlap=32, samples=0, scale=1, lo=0.1, hi=9.5)
    >>> header["ASRINPUT"], header["ASRMSHA"] == info["sha256"], header["ASRCONS"]
    ('m51.fits', True, True)
    """
    now = utc_now().strftime("%Y-%m-%dT%H:%M:%S")
    sha = info["sha256"]
    model_name = Path(str(info.get("path", "model"))).name
    cards = [
        ("ASRVERS", __version__, "astrosr version that deblurred this image"),
        ("ASRDATE", now, "UTC date of deblurring"),
        ("ASRINPUT", image.path.name, "input file"),
        ("ASRINHDU", image.hdu, "input HDU index"),
        ("ASRMODEL", str(info.get("model", "?")), "model family"),
        ("ASRMSHA", sha, "sha256 of the model weights file"),
        ("ASRPSF", psf_id, "PSF used (model input and consistency step)"),
        ("ASRTRAIN", trained_for, "degradation the model was trained for"),
        ("ASRCONS", bool(consistency), "data-consistency step applied"),
        ("ASROVLP", int(overlap), "tile overlap, input pixels"),
        ("ASRSAMP", int(samples), "posterior draws behind UNCERT (0: none)"),
        # the scale of an UNCERT that is there: no card describes an extension the file lacks
        *([("ASRUSCAL", float((info.get("uncertainty") or {}).get("scale", 1.0)),
            "UNCERT = std of the draws x this (val-calibrated)")] if samples else []),
        ("ASRSCALE", int(scale), "output pixels per input pixel per axis"),
        ("ASRLO", lo, "input 0.5 percentile: model normalisation"),
        ("ASRHI", hi, "input 99.9 percentile: model normalisation"),
        *cards,
    ]
    header.remove("ASRUSCAL", ignore_missing=True, remove_all=True)  # an earlier run's, with draws this one lacks
    for key, value, comment in cards:
        # a value too long for its comment keeps the card whole and drops the comment
        room = 80 - len(fits.Card(key, value).image.rstrip()) - 3
        header.remove(key, ignore_missing=True, remove_all=True)  # an input deblurred before
        header.append(fits.Card(key, value, comment if len(comment) <= room else ""), end=True)
    if image.plane is not None:
        header["ASRPLANE"] = (image.plane, "plane of the input cube")
    if any(isinstance(v, str) and len(v) > 68 for v in header.values()):
        # a long value (a PSF file's path) is written with CONTINUE cards: say which convention
        header["LONGSTRN"] = ("OGIP 1.0", "CONTINUE cards: the OGIP long string convention")
    for line in (
        f"astrosr {__version__} deblur {now}Z",
        f"input {image.path.name} HDU {image.hdu}" + (f" plane {image.plane}" if image.plane is not None else ""),
        f"model {info.get('model', '?')} from {model_name}, weights sha256:",
        sha,
        f"PSF: {psf_id}",
        f"model trained for: {trained_for}",
        f"data-consistency step {'on' if consistency else 'off'}; overlap {overlap} px; samples {samples}",
        f"normalised by input percentiles 0.5/99.9: {lo:.6g} / {hi:.6g}",
        *history,
    ):
        header.add_history(line)
    return header


def existing_matches(
    path: str | Path, *, sha256: str, psf_id: str, consistency: bool, samples: int, overlap: int,
    uncertainty_scale: float = 1.0,
) -> bool:
    """True when the output at ``path`` was written by astrosr with this model, PSF and settings.

    The cards read back are those :func:`add_provenance` writes: ASRMSHA
    (and the sha256 among the HISTORY lines), ASRPSF, ASRCONS, ASRSAMP and
    ASROVLP, and with samples ASRUSCAL (the model's calibration lives in its
    JSON, beside weights whose sha256 it does not change). The settings count as much as the model: a rerun without the
    consistency step or with samples must not silently keep an image made
    another way (the step on, or no UNCERT). An unreadable file is not a match.

    Examples
    --------
    >>> existing_matches("nowhere_deblur.fits", sha256="00", psf_id="Moffat", consistency=True, samples=0, overlap=32)
    False
    """
    path = Path(path)
    settings = {"ASRCONS": bool(consistency), "ASRSAMP": int(samples), "ASROVLP": int(overlap)}
    if samples:
        settings["ASRUSCAL"] = float(uncertainty_scale)
    try:
        with fits.open(path) as hdul:
            header = hdul[1].header if path.name.endswith(".fz") and len(hdul) > 1 else hdul[0].header
            history = [str(v).strip() for v in header.get("HISTORY", [])]
            same = all(key in header and header[key] == value for key, value in settings.items())
            return header.get("ASRMSHA") == sha256 and header.get("ASRPSF") == psf_id and sha256 in history and same
    except Exception:  # an unreadable leftover is simply not ours
        return False


def _run_stamp(hdu) -> str:
    return utc_now().strftime("%Y-%m-%dT%H:%M:%S")


def _reproducible_writes() -> None:
    # Two runs with SOURCE_DATE_EPOCH set must write the same bytes. astropy dates the CHECKSUM/DATASUM comments
    # by the clock (on every HDU, and on the binary table a compressed HDU writes), and its GZIP codecs call
    # gzip.compress, which stamps each tile with the clock's time. Give the first the run's date (utc_now
    # honours SOURCE_DATE_EPOCH) and the second mtime 0 ("no time stamp", RFC 1952). Idempotent and the same
    # for every caller, so it is set once and never undone.
    from astropy.io.fits.hdu import base
    from astropy.io.fits.hdu.compressed import _codecs

    base._ValidHDU._get_timestamp = _run_stamp
    if getattr(_codecs.gzip_compress, "keywords", None) != {"mtime": 0}:
        _codecs.gzip_compress = functools.partial(gzip.compress, mtime=0)


def _hdu(data, header, *, name=None, compress=False):
    if compress:
        # lossless: no float quantisation (quantize_level 0), GZIP of the byte-shuffled tiles
        return fits.CompImageHDU(data, header=header, name=name, compression_type="GZIP_2", quantize_level=0.0)
    return fits.ImageHDU(data, header=header, name=name)


def write_output(
    out: str | Path,
    sr: np.ndarray,
    header: fits.Header,
    mask: np.ndarray,
    uncert: np.ndarray | None,
    *,
    compress: bool,
    overwrite: bool,
) -> None:
    """Write the image (primary HDU, or HDU 1 of a ``.fz``), MASK, then UNCERT, atomically.

    The file is written beside ``out`` under a temporary name and renamed
    when complete, so an interrupted write leaves nothing at ``out``; every
    HDU gets CHECKSUM/DATASUM and the write refuses a header that is not
    valid FITS. MASK and UNCERT carry the image's WCS cards; UNCERT also its
    BUNIT.

    Parameters
    ----------
    out : str or Path
        The output file (see :func:`output_path`).
    sr : ndarray
        The restored image (float32).
    header : astropy.io.fits.Header
        Its header (:func:`clean_header`, :func:`add_provenance`).
    mask : ndarray
        uint8, 1 where the input pixel was NaN, same shape as ``sr``.
    uncert : ndarray or None
        Per-pixel std over posterior draws (float32), or None for no UNCERT.
    compress : bool
        Tile-compress every HDU (lossless).
    overwrite : bool
        Replace an existing ``out``; otherwise it is an InputError.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> out = Path(tempfile.mkdtemp()) / "m51_deblur.fits"
    >>> sr = np.ones((8, 8), np.float32)
    >>> write_output(out, sr, fits.Header({"OBJECT": "M51"}), np.zeros((8, 8), np.uint8), None,
    ...              compress=False, overwrite=False)
    >>> [h.name for h in fits.open(out)]
    ['PRIMARY', 'MASK']
    """
    mask_header = wcs_cards(header)
    mask_header["COMMENT"] = "1 where the input pixel was NaN (the image is NaN there)"
    if compress:
        hdus = [fits.PrimaryHDU(), _hdu(sr, header, compress=True)]
    else:
        hdus = [fits.PrimaryHDU(sr, header=header)]
    hdus.append(_hdu(mask, mask_header, name="MASK", compress=compress))
    if uncert is not None:
        uncert_header = wcs_cards(header)
        if "BUNIT" in header:
            uncert_header["BUNIT"] = header["BUNIT"]
        # astropy's CCDData reads an uncertainty HDU by this card
        uncert_header["UTYPE"] = ("StdDevUncertainty", "1-sigma uncertainty of each pixel")
        for key in ("ASRSAMP", "ASRUSCAL"):
            if key in header:
                uncert_header[key] = (header[key], header.comments[key])
        uncert_header["COMMENT"] = ("per-pixel std over posterior draws of the whole restoration (each through the "
                                    "data-consistency step when on), times ASRUSCAL, in the image's units")
        hdus.append(_hdu(uncert, uncert_header, name="UNCERT", compress=compress))
    _reproducible_writes()
    with atomic_path(out, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp, checksum=True, output_verify="exception")
