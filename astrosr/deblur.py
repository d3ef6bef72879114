"""Deblurring survey images: FITS in, FITS out.

:func:`deblur_image` restores one array (for notebooks); :func:`deblur_file`
turns one FITS file into ``OUT/<stem>_deblur.fits`` (CONTRACTS.md 6) with the
input's header and WCS, provenance cards, a ``MASK`` extension of the pixels
that were NaN and an optional ``UNCERT`` extension. Batches (directories,
globs, local processes, Dask) are :mod:`astrosr.batch`; its
:func:`deblur_batch` is importable from here too. The pixels themselves come
from :func:`astrosr.restore.restore_image`, the path evaluate scores.
"""

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import __version__
from .psf import BENCH_V1_PSF, PSF, measure_fwhm
from .errors import AstrosrError, ConfigError, InputError
from .files import atomic_path, sha256_file
from .fits_io import STRUCTURAL, read_image, strip_fits_suffix

__all__ = [
    "FileResult",
    "deblur_image",
    "deblur_file",
    "deblur_batch",
    "expand_inputs",
    "output_path",
    "psf_identity",
    "resolve_device",
]

#: the WCS cards copied into the UNCERT and MASK extensions so viewers align them
_WCS_CARD = re.compile(
    r"^(WCSAXES|WCSNAME|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|"
    r"LONPOLE|LATPOLE|EQUINOX|EPOCH|RADESYS|RADECSYS|MJD-OBS|DATE-OBS|"
    r"(A|B|AP|BP)_ORDER|(A|B|AP|BP)_\d+_\d+|A_DMAX|B_DMAX)$"
)
_SIP = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")


@dataclass
class FileResult:
    """What happened to one input of a batch.

    Attributes
    ----------
    input : str
    output : str or None
    status : {'done', 'skipped', 'failed'}
    reason : str
        One line: why it was skipped or failed, empty when done.
    seconds : float
        Wall-clock time spent on the file.
    megapixels : float
        Input size (0 when it could not be read).
    """

    input: str
    output: str | None
    status: str
    reason: str = ""
    seconds: float = 0.0
    megapixels: float = 0.0


def resolve_device(device):
    """``'auto'`` -> ``'cuda'`` when a GPU is visible, else ``'cpu'``; anything else unchanged."""
    import torch

    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _psf_kernel_and_fwhm(psf):
    if isinstance(psf, PSF):
        kernel = psf.kernel()
        return kernel, psf.fwhm_px(kernel)
    kernel = np.asarray(psf, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ConfigError(f"psf: expected a PSF or a 2-D kernel with odd sides, got shape {kernel.shape}")
    if not kernel.sum() > 0:
        raise ConfigError("psf: kernel has no positive sum")
    kernel = kernel / kernel.sum()
    return kernel, measure_fwhm(kernel)


def _absolute_psf(psf):
    """A file PSF names its file by absolute path: the same identity from any directory."""
    if isinstance(psf, PSF) and psf.shape == "file":
        return dataclasses.replace(psf, path=str(Path(psf.path).resolve()))
    return psf


def psf_identity(psf):
    """The one-line name of a PSF recorded in output headers and compared when skipping.

    Analytic PSFs are named by their parameters; a file PSF also by the
    sha256 of its file, so a changed kernel under the same name is noticed.
    """
    text = psf.describe()
    if psf.shape == "file":
        if not Path(psf.path).is_file():
            raise InputError(f"{psf.path}: PSF file not found")
        text += f" sha256 {sha256_file(psf.path)[:16]}"
        if psf.pixscale is not None and psf.image_pixscale is not None:
            text += f" resampled {psf.pixscale:g}->{psf.image_pixscale:g} arcsec/px"
    return text


def deblur_image(
    array,
    model,
    *,
    psf=BENCH_V1_PSF,
    consistency=True,
    overlap=32,
    samples=0,
    device="cpu",
    seed=0,
    progress=None,
):
    """Deblur one image held in memory (the notebook entry point).

    Parameters
    ----------
    array : array_like (H, W)
        Image in physical units; NaN pixels allowed (NaN again in the output).
    model : torch.nn.Module or str or Path
        An astrosr model, or a weights file / ``'default'`` to load with
        :func:`astrosr.checkpoint.load_model`. A module is moved to ``device``.
    psf : PSF or ndarray
        The image's PSF (CONTRACTS.md 1); default bench-v1's Moffat.
    consistency : bool
        Apply the data-consistency step (default True).
    overlap : int
        Tile overlap in input pixels.
    samples : int
        Posterior draws for a per-pixel uncertainty map (0: none).
    device : str
        ``'cpu'``, ``'cuda'``, ... or ``'auto'``.
    seed : int
        Seed of the posterior draws (the caller's torch RNG state is kept).
    progress : callable, optional
        Called with the number of tiles done after each batch.

    Returns
    -------
    astrosr.restore.Restored
        ``sr`` (and ``uncert``) in the input's units, plus the input's
        normalisation limits ``blu_lo`` / ``blu_hi``.
    """
    from .restore import restore_image

    device = resolve_device(device)
    if isinstance(model, (str, Path)):
        model = _load_model(str(model), device)[0]
    else:
        model = model.to(device)
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, got {overlap}")
    if samples < 0:
        raise ConfigError(f"samples must be >= 0, got {samples}")
    image = np.asarray(array, dtype=np.float64)
    if image.ndim != 2:
        raise InputError(f"deblur_image: expected a 2-D image, got shape {image.shape}")
    if not np.isfinite(image).any():
        raise InputError("deblur_image: every pixel is NaN or infinite")
    kernel, fwhm = _psf_kernel_and_fwhm(psf)
    import torch

    # posterior draws from a fixed seed (caller's RNG state untouched): same UNCERT on every run
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return restore_image(
            image,
            model,
            psf_kernel=kernel,
            psf_fwhm=fwhm,
            consistency=consistency,
            overlap=overlap,
            samples=samples,
            device=device,
            progress=progress,
        )


# --- model loading, cached per process (a worker loads its model once) -------

_MODEL_CACHE = {}


def _load_model(model_path, device):
    from .checkpoint import load_model

    # the file's stamp is in the key: a model retrained under the same name is reloaded
    stat = os.stat(model_path) if os.path.isfile(model_path) else None
    stamp = (stat.st_size, stat.st_mtime_ns) if stat else None
    key = (model_path, device, stamp)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # one model per process: a batch uses one
        _MODEL_CACHE[key] = load_model(model_path, device=device)
    return _MODEL_CACHE[key]


def _trained_for(info):
    """One line on the degradation a model was trained for, from its checkpoint info."""
    scale = int((info.get("model_config") or {}).get("scale", 1) or 1)
    psf = info.get("psf")
    if isinstance(psf, dict) and "fwhm_range" in psf:  # randomised training data
        low, high = psf["fwhm_range"]
        return f"{psf.get('shape', 'mixed')} PSFs FWHM {low:.2f}-{high:.2f}px, scale {scale}"
    try:
        text = PSF(**psf).describe() if isinstance(psf, dict) else "unrecorded PSF"
    except (TypeError, AstrosrError):
        text = f"PSF {psf}"
    return f"{text}, scale {scale}"


# --- output names --------------------------------------------------------------


def output_path(path, out_dir, *, compress=False):
    """``OUT/<stem>_deblur.fits`` (``.fits.fz`` with ``compress``) for an input ``path``."""
    suffix = "_deblur.fits.fz" if compress else "_deblur.fits"
    return Path(out_dir) / (strip_fits_suffix(Path(path).name) + suffix)


# --- headers -------------------------------------------------------------------


_BEYOND_IMAGE_AXES = re.compile(r"^(WCSAXES|CTYPE[3-9]|CRVAL[3-9]|CRPIX[3-9]|CDELT[3-9]|CUNIT[3-9]|CROTA[3-9]|"
                                r"CD[1-9]_[3-9]|CD[3-9]_[1-9]|PC[1-9]_[3-9]|PC[3-9]_[1-9])$")


def _clean_header(header, *, image_axes_only=False):
    """The input's cards less the structural ones (CONTRACTS.md 6).

    With ``image_axes_only`` (a plane cut from a cube) the WCS cards of the
    axes beyond the image go too, so the 2-D output has a 2-D WCS.
    """
    out = fits.Header()
    for card in header.cards:
        if STRUCTURAL.match(card.keyword) or (image_axes_only and _BEYOND_IMAGE_AXES.match(card.keyword)):
            continue
        out.append(card, end=True)
    return out


def _rescale_wcs(header, scale):
    """Rescale the pixel side of a WCS for an image with ``scale`` times the pixels per axis.

    Old 1-based pixel ``p`` lands at ``S (p - 1/2) + 1/2``: CRPIX moves that
    way, CDELT/CD shrink by S, and SIP coefficients of order p+q scale by
    ``S^(1-p-q)`` (their pixel offsets grow by S, their output too).
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


def _wcs_cards(header):
    out = fits.Header()
    for card in header.cards:
        if _WCS_CARD.match(card.keyword):
            out.append(card, end=True)
    return out


def _provenance(header, *, image, info, psf_id, trained_for, consistency, overlap, samples, scale, lo, hi):
    """Add astrosr's keyword and HISTORY cards: what made this image, from what."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
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
        ("ASRSCALE", int(scale), "output pixels per input pixel per axis"),
        ("ASRLO", lo, "input 0.5 percentile: model normalisation"),
        ("ASRHI", hi, "input 99.9 percentile: model normalisation"),
    ]
    for key, value, comment in cards:
        # a value too long for its comment keeps the card whole and drops the comment
        room = 80 - len(fits.Card(key, value).image.rstrip()) - 3
        header.remove(key, ignore_missing=True, remove_all=True)  # an input deblurred before
        header.append(fits.Card(key, value, comment if len(comment) <= room else ""), end=True)
    if image.plane is not None:
        header["ASRPLANE"] = (image.plane, "plane of the input cube")
    for line in (
        f"astrosr {__version__} deblur {now}Z",
        f"input {image.path.name} HDU {image.hdu}" + (f" plane {image.plane}" if image.plane is not None else ""),
        f"model {info.get('model', '?')} from {model_name}, weights sha256:",
        sha,
        f"PSF: {psf_id}",
        f"model trained for: {trained_for}",
        f"data-consistency step {'on' if consistency else 'off'}; overlap {overlap} px; samples {samples}",
        f"normalised by input percentiles 0.5/99.9: {lo:.6g} / {hi:.6g}",
    ):
        header.add_history(line)
    return header


def _existing_matches(path, sha, psf_id, settings):
    """True when the output at ``path`` was written by astrosr with this model, PSF and ``settings``.

    ``settings`` maps provenance keywords (ASRCONS, ASRSAMP, ASROVLP) to this
    run's values: a rerun with ``--no-consistency`` or ``--samples`` must not
    silently keep an image made another way (no UNCERT, or the step on).
    """
    try:
        with fits.open(path) as hdul:
            header = hdul[1].header if path.name.endswith(".fz") and len(hdul) > 1 else hdul[0].header
            history = [str(v).strip() for v in header.get("HISTORY", [])]
            same = all(key in header and header[key] == value for key, value in settings.items())
            return header.get("ASRMSHA") == sha and header.get("ASRPSF") == psf_id and sha in history and same
    except Exception:  # an unreadable leftover is simply not ours
        return False


def _hdu(data, header, *, name=None, compress=False):
    if compress:
        # lossless: no float quantisation (quantize_level 0), GZIP of the byte-shuffled tiles
        return fits.CompImageHDU(data, header=header, name=name, compression_type="GZIP_2", quantize_level=0.0)
    return fits.ImageHDU(data, header=header, name=name)


def _write(out, sr, header, mask, uncert, *, compress, overwrite):
    """Image (primary, or HDU 1 of a ``.fz``), MASK, then UNCERT; atomically."""
    mask_header = _wcs_cards(header)
    mask_header["COMMENT"] = "1 where the input pixel was NaN (the image is NaN there)"
    if compress:
        hdus = [fits.PrimaryHDU(), _hdu(sr, header, compress=True)]
    else:
        hdus = [fits.PrimaryHDU(sr, header=header)]
    hdus.append(_hdu(mask, mask_header, name="MASK", compress=compress))
    if uncert is not None:
        uncert_header = _wcs_cards(header)
        if "BUNIT" in header:
            uncert_header["BUNIT"] = header["BUNIT"]
        uncert_header["COMMENT"] = "per-pixel std over posterior draws, in the image's units"
        hdus.append(_hdu(uncert, uncert_header, name="UNCERT", compress=compress))
    with atomic_path(out, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp, checksum=True, output_verify="exception")


def deblur_file(
    path,
    out_dir,
    *,
    model_path="default",
    psf=BENCH_V1_PSF,
    consistency=True,
    overlap=32,
    samples=0,
    compress=False,
    overwrite=False,
    device="auto",
    hdu=None,
    plane=None,
    progress=None,
):
    """Deblur one FITS file into ``out_dir`` (name per CONTRACTS.md 6).

    Parameters
    ----------
    path : str or Path
        Input FITS (``.fits``, ``.fits.gz``, ``.fz``); its first 2-D image HDU.
    out_dir : str or Path
    model_path : str or Path
        Weights file (``best.pt``, ``.safetensors``) or ``'default'``.
    psf : PSF
        The input's PSF (default bench-v1's Moffat FWHM 4, beta 3).
    consistency, overlap, samples
        As :func:`deblur_image`.
    compress : bool
        Write a lossless tile-compressed ``_deblur.fits.fz`` (image in HDU 1).
    overwrite : bool
        Replace an existing output. Without it an output made with the same
        model, PSF, consistency, samples and overlap is skipped and any other
        existing output is an error.
    device : str
    hdu : int or str, optional
        HDU index or EXTNAME of the image (default: the first 2-D image).
    plane : int, optional
        Plane of a cube; the output header keeps only the two image axes of the WCS.
    progress : callable, optional
        Tile progress, as :func:`deblur_image`.

    Returns
    -------
    FileResult
        ``'done'`` or ``'skipped'``.

    Raises
    ------
    InputError
        Unreadable input, output equal to the input, output in the way.
    CheckpointError
        Bad model file.
    """
    start = time.perf_counter()
    path = Path(path)
    out = output_path(path, out_dir, compress=compress)
    if out.resolve() == path.resolve():
        raise InputError(f"{path}: output would overwrite the input; choose another -o directory")
    device = resolve_device(device)
    model, info = _load_model(str(model_path), device)
    psf = _absolute_psf(psf)
    psf_id = psf_identity(psf)
    if out.exists() and not overwrite:
        settings = {"ASRCONS": bool(consistency), "ASRSAMP": int(samples), "ASROVLP": int(overlap)}
        if _existing_matches(out, info["sha256"], psf_id, settings):
            return FileResult(str(path), str(out), "skipped", "done before with this model, PSF and settings")
        raise InputError(f"{out}: output exists and was not made with this model and PSF, or with other "
                         "consistency/samples/overlap settings (use --overwrite to replace it)")

    image = read_image(path, hdu=hdu, plane=plane, min_size=8)
    restored = deblur_image(
        image.data, model, psf=psf, consistency=consistency, overlap=overlap, samples=samples, device=device, progress=progress
    )
    scale = int(getattr(model, "scale", 1))
    megapixels = image.data.size / 1e6
    mask = (~np.isfinite(image.data)).astype(np.uint8)
    if scale > 1:
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
    image.data = None  # free the float64 input before the float32 copies and the write
    sr = restored.sr.astype(np.float32, copy=False)
    uncert = None if restored.uncert is None else restored.uncert.astype(np.float32, copy=False)
    lo, hi = restored.blu_lo, restored.blu_hi
    del restored
    header = _rescale_wcs(_clean_header(image.header, image_axes_only=image.plane is not None), scale)
    _provenance(
        header,
        image=image,
        info=info,
        psf_id=psf_id,
        trained_for=_trained_for(info),
        consistency=consistency,
        overlap=overlap,
        samples=samples,
        scale=scale,
        lo=lo,
        hi=hi,
    )
    _write(out, sr, header, mask, uncert, compress=compress, overwrite=overwrite)
    return FileResult(str(path), str(out), "done", "", time.perf_counter() - start, megapixels)


def __getattr__(name):
    # the batch machinery lives in astrosr.batch, which imports this module: loaded on first use
    if name in ("deblur_batch", "expand_inputs"):
        from . import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
