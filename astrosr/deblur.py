"""Deblurring survey images: FITS in, FITS out.

Kept together as one module: :class:`DeblurOptions`, the in-memory entry
point and the one-file entry point share every option and check.

:func:`deblur_image` restores one array (for notebooks); :func:`deblur_file`
turns one FITS file into ``OUT/<stem>_deblur.fits`` (``_deblur.fits.fz``
when compressed) with the input's header and WCS, provenance cards, a
``MASK`` extension of the pixels that were NaN and, with posterior samples,
an ``UNCERT`` extension; the file's layout is :mod:`astrosr.fits_out`. An
existing output is skipped only when its cards name the same model sha256,
PSF and consistency/samples/overlap settings; any other existing output is
an error unless ``overwrite`` is set. Batches (directories, globs, local
processes, Dask) are :func:`astrosr.batch.deblur_batch`. The pixels
themselves come from :func:`astrosr.restore.restore_image`, the same path
``astrosr evaluate`` scores.

Examples
--------
>>> import numpy as np
>>> from astrosr.deblur import deblur_image
>>> from astrosr.simulate import star_field
>>> image = star_field(fwhm=3.5, beta=3.0, seed=2)  # stars as observed: their PSF is measured, removed to FWHM 2
>>> restored = deblur_image(image, "default")
>>> restored.sr.shape, round(restored.psf.image_fwhm, 1), restored.psf.target_fwhm
((256, 256), 3.5, 2.0)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .config import check_device, check_options, option, replace
from .errors import AstrosrError, ConfigError, InputError
from .progress import ProgressCallback
from .psf import PSF
from .psf_matching import check_grid

#: deblur's default PSF: measured from each image's own stars
AUTO_PSF = PSF(shape="auto")

if TYPE_CHECKING:
    import torch

    from .restore import Restored

log = logging.getLogger(__name__)

__all__ = [
    "DeblurOptions",
    "AUTO_PSF",
    "FileResult",
    "deblur_image",
    "deblur_file",
    "trained_for",
    "catalog_path",
    "CATALOG_SAMPLES",
]

#: Posterior draws behind a source table when ``samples`` is not given
CATALOG_SAMPLES = 16


def check_catalog(catalog: bool, psf_grid: int) -> None:
    """A source table has one detector FWHM per image, so not with a PSF grid yet: otherwise a ConfigError."""
    if catalog and psf_grid > 1:
        raise ConfigError("catalog: not available with psf_grid > 1 yet (one detector FWHM per image)")


def catalog_path(output: str | Path) -> Path:
    """The source table written beside a deblur output: ``<stem>_sources.ecsv``.

    Examples
    --------
    >>> catalog_path("out/m51_deblur.fits.fz").name
    'm51_deblur_sources.ecsv'
    """
    output = Path(output)
    name = output.name
    for suffix in (".fz", ".fits"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return output.with_name(f"{name}_sources.ecsv")


@dataclass(frozen=True)
class DeblurOptions:
    """How images are deblurred into files: the library argument, the pipeline's ``deblur:`` keys and the CLI flags.

    Parameters
    ----------
    model : str
        Weights file (``best.pt``, ``.safetensors``) or ``'default'``.
    psf : PSF
        The inputs' PSF: ``PSF(shape='auto')`` (the default) measures it on
        each image's own stars; a stated PSF is checked against them.
    target_fwhm : float
        The declared output PSF: a Moffat of this FWHM (output pixels) with
        the image's beta (:mod:`astrosr.psf_matching`); 0: none, the image's
        PSF itself is removed (bench-v1's convention).
    ignore_psf_check : bool
        Deblur even when a stated PSF is broader than the image's stars, or
        the image's PSF is already at or below the output PSF.
    psf_grid : int
        With ``psf`` auto: the PSF measured per region of an N x N grid, each
        region restored with its own kernel, blended across the borders.
    consistency : bool
        Apply the data-consistency step (default True).
    overlap : int
        Tile overlap in input pixels.
    samples : int
        Posterior draws for an ``UNCERT`` extension (0: none; with
        ``catalog``, :data:`CATALOG_SAMPLES`).
    catalog : bool
        Write a source table beside each output (``<output>_sources.ecsv``,
        :mod:`astrosr.catalog`): positions (pixel and WCS), aperture flux and
        its uncertainty over the draws, and ``p_detect``, the fraction of
        draws that find the source again.
    compress : bool
        Write lossless tile-compressed ``_deblur.fits.fz`` files (image in HDU 1).
    overwrite : bool
        Replace existing outputs. Without it an output made with the same
        model, PSF, consistency, samples and overlap is skipped and any other
        existing output is an error.
    device : str
        ``'cpu'``, ``'cuda'``, ``'cuda:1'``... or ``'auto'`` (a GPU when present).
    hdu : int or str or None
        HDU index or EXTNAME of the image in every input (default: the first 2-D image).
    plane : int or None
        Plane of a cube; the output header keeps only the two image axes of the WCS.
    workers : int
        Local worker processes of a batch (1: this process).
    scheduler : str or None
        Address of a Dask scheduler (``tcp://host:8786``): one task per image.
    dask_local : int or None
        Start a local Dask cluster with this many worker processes.
    allow_astrosr_input : bool
        Deblur an input that is itself an astrosr output (its ``ASRVERS``
        card); refused by default, so a directory holding its own outputs is
        not deblurred twice.

    Examples
    --------
    >>> from astrosr.deblur import DeblurOptions
    >>> DeblurOptions(samples=8).samples
    8
    >>> DeblurOptions(workers=0)
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: workers: must be >= 1, got 0
    """

    model: str = option("default", help="Weights file (.pt/.safetensors) or 'default'.")
    psf: PSF = option(AUTO_PSF, help="The inputs' PSF.")
    target_fwhm: float = option(2.0, minimum=0.0, help="Output PSF FWHM in output px (0: none; the PSF itself removed) [2].")
    ignore_psf_check: bool = option(False, help="Deblur even when the PSF checks refuse (a stated PSF broader than "
                                                "the stars; nothing to deblur).")
    psf_grid: int = option(1, minimum=1, help="With --psf auto: measure and remove the PSF per region of an N x N "
                                              "grid [1].")
    consistency: bool = option(True, help="Skip the data-consistency step (network output only).")
    overlap: int = option(32, minimum=0, help="Tile overlap in input pixels.")
    samples: int = option(0, minimum=0, help="Posterior draws for an UNCERT extension [0; 16 with --catalog].")
    catalog: bool = option(False, help="Write a source table (ECSV) beside each output: positions, aperture flux and "
                                       "p_detect over the posterior draws.")
    compress: bool = option(False, help="Write lossless tile-compressed _deblur.fits.fz files.")
    overwrite: bool = option(False, help="Replace existing outputs instead of skipping them.")
    device: str = option("auto", help="cpu, cuda, cuda:1... or auto (a GPU when present).")
    hdu: int | str | None = option(None, help="HDU index or EXTNAME of the image in every input [first 2-D image].")
    plane: int | None = option(None, minimum=0, help="Plane of a 3-D cube.")
    workers: int = option(1, minimum=1, help="Local worker processes.")
    scheduler: str | None = option(None, help="Dask scheduler address (tcp://host:8786): one task per image.")
    dask_local: int | None = option(None, minimum=1, help="Start a local Dask cluster with N worker processes.")
    allow_astrosr_input: bool = option(False, help="Deblur inputs that are themselves astrosr outputs (ASR cards).")

    def __post_init__(self):
        check_options(self)
        check_device(self.device)
        check_grid(self.psf_grid, self.psf)
        check_catalog(self.catalog, self.psf_grid)
        if self.psf.ranged:
            key = self.psf.ranged_key()
            raise ConfigError(f"psf.{key}: {getattr(self.psf, key)} is a range; an image has one PSF (ranges are for prepare)")
        if self.scheduler and self.dask_local:
            raise ConfigError("scheduler and dask_local exclude each other")
        if (self.scheduler or self.dask_local) and self.workers > 1:
            raise ConfigError("workers is for local processes; with scheduler / dask_local the cluster sets the workers")


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


def trained_for(info: dict[str, Any]) -> str:
    """One line on the degradation a model was trained for, from its checkpoint info.

    Examples
    --------
    >>> trained_for({"model_config": {"scale": 1}, "psf": {"shape": "moffat", "fwhm": 4.0}})
    'Moffat FWHM=4px beta=3 41x41, scale 1'
    >>> trained_for({"psf": None})
    'unrecorded PSF, scale 1'
    """
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


def deblur_image(
    array: ArrayLike,
    model: torch.nn.Module | str | Path,
    *,
    psf: PSF | np.ndarray = AUTO_PSF,
    target_fwhm: float = 2.0,
    header=None,
    name: str = "image",
    ignore_psf_check: bool = False,
    consistency: bool = True,
    overlap: int = 32,
    samples: int = 0,
    device: str = "cpu",
    seed: int = 0,
    progress: ProgressCallback = None,
    model_info: dict | None = None,
    psf_grid: int = 1,
    catalog: bool = False,
) -> Restored:
    """Deblur one image held in memory (the notebook entry point).

    Parameters
    ----------
    array : array_like (H, W)
        Image in physical units; NaN pixels allowed (NaN again in the output).
    model : torch.nn.Module or str or Path
        An astrosr model, or a weights file / ``'default'`` to load with
        :func:`astrosr.checkpoint.load_model` (once per process). A module
        is moved to ``device``.
    psf : PSF or ndarray
        The image's PSF: ``PSF(shape='auto')`` (default) measures it on the
        image's own stars; a stated PSF, or its kernel as a 2-D array with
        odd sides, is checked against them.
    target_fwhm : float
        The declared output PSF's FWHM in output pixels (a Moffat with the
        image's beta); 0: none, the PSF itself is removed.
    header : astropy.io.fits.Header, optional
        The image's header (its ``SATURATE`` level, for ``auto``).
    name : str
        The image's name in error messages.
    ignore_psf_check : bool
        Skip the refusals of :func:`astrosr.psf_matching.match_psf`.
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
        ``progress('tiles', done, total)`` after each network batch (:mod:`astrosr.progress`).
    model_info : dict, optional
        The model's checkpoint info (its training PSF range), when ``model``
        is a module; read with the file otherwise.
    psf_grid : int
        With ``psf`` auto: measure the PSF per region of an N x N grid and
        restore each region with its own kernel, blended across the borders.
    catalog : bool
        Also build the source table (``restored.catalog``, a
        :class:`~astrosr.catalog.DrawCatalog`; its ``p_detect`` needs ``samples``).

    Returns
    -------
    astrosr.restore.Restored
        ``sr`` (and ``uncert``) in the input's units, the input's
        normalisation limits ``blu_lo`` / ``blu_hi``, and ``psf``: the
        :class:`~astrosr.psf_matching.PSFMatch` (image PSF, kernel removed,
        output PSF).

    Raises
    ------
    InputError
        Not a 2-D image, no finite pixel, or a PSF check refused the request.
    ConfigError
        Negative ``overlap`` or ``samples``, or a kernel that is not 2-D with
        odd sides and a positive sum.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import PSF
    >>> image = np.random.default_rng(1).normal(10.0, 1.0, (48, 40))
    >>> restored = deblur_image(image, "default", psf=PSF(fwhm=3.0), samples=2)
    >>> restored.sr.shape == restored.uncert.shape == (48, 40)
    True
    """
    # torch loads on first use, not on import: importing astrosr.deblur (the CLI, a Dask client) stays light
    from .checkpoint import load_model_cached, resolve_device
    from .restore import restore_image

    device = resolve_device(device)
    if isinstance(model, (str, Path)):
        model, model_info = load_model_cached(str(model), device=device)
    else:
        model = model.to(device)
    if overlap < 0:
        raise ConfigError(f"overlap: must be >= 0, got {overlap}")
    if samples < 0:
        raise ConfigError(f"samples: must be >= 0, got {samples}")
    image = np.asarray(array, dtype=np.float64)
    if image.ndim != 2:
        raise InputError(f"deblur_image: expected a 2-D image, got shape {image.shape}")
    if not np.isfinite(image).any():
        raise InputError("deblur_image: every pixel is NaN or infinite")
    from .psf_matching import check_output, match_psf

    scale = int(getattr(model, "scale", 1))
    check_catalog(catalog, psf_grid)  # before the PSF is measured
    match = match_psf(image, psf, target_fwhm=target_fwhm, scale=scale, header=header, name=name,
                      ignore_psf_check=ignore_psf_check, model_info=model_info, grid=psf_grid)
    cells = match.regions or None
    observer = _catalog_observer(image, match, scale) if catalog else None
    import torch

    # posterior draws from a fixed seed (caller's RNG state untouched): same UNCERT on every run
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        keys = dict(consistency=consistency, overlap=overlap, samples=samples, device=device)
        if match.convolve:
            restored = _convolved(image, match.kernel, scale=scale)
            if observer is not None:
                observer.restored(restored.sr)
        elif cells is None:
            restored = restore_image(image, model, psf_kernel=match.kernel, psf_fwhm=match.kernel_fwhm,
                                     progress=progress, observer=observer, **keys)
        else:
            restored = _restore_regions(image, model, cells, scale=scale, margin=max(2 * overlap, 32),
                                        progress=progress, **keys)
    restored.psf = match
    restored.catalog = observer
    check_output(image, restored.sr, match, name=name)
    return restored


def _catalog_observer(image, match, scale):
    """The :class:`~astrosr.catalog.DrawCatalog` of one image: the output PSF's FWHM, the input's background."""
    from .catalog import DrawCatalog
    from .stars import background

    median, std = background(image)
    # without a declared output PSF the output's is not known: the image's own is the conservative scale
    fwhm = match.target_fwhm or match.image_fwhm * scale
    return DrawCatalog(fwhm=fwhm, background_std=std, median=median)


def _convolved(image, kernel, *, scale):
    """The image convolved to the output PSF (the network is not run): a Restored on its own grid."""
    from .degrade import convolve_extend, percentile_limits
    from .restore import Restored

    if scale != 1:
        raise ConfigError("target_fwhm: a model that adds pixels cannot convolve to an output PSF broader than the image's")
    sr = np.where(np.isfinite(image), convolve_extend(image, kernel), np.nan).astype(np.float32)
    lo, hi = percentile_limits(image)
    return Restored(sr, None, lo, hi)


def _restore_regions(image, model, cells, *, scale, margin, progress, **keys):
    """Restore each grid region with its own kernel, over a window ``margin`` px wider, and blend the windows.

    Across each border between regions the two windows overlap by 2 x ``margin``: one weight rises
    while the other falls (:func:`astrosr.tiling.edge_ramp`), so the weights sum to 1 and no seam shows.
    """
    from .degrade import percentile_limits
    from .restore import Restored, restore_image
    from .tiling import edge_ramp

    ny, nx = image.shape
    total = np.zeros((ny * scale, nx * scale))
    weight = np.zeros_like(total)
    uncert = np.zeros_like(total) if keys["samples"] else None

    for k, ((y0, y1, x0, x1), match) in enumerate(cells):
        wy0, wy1, wx0, wx1 = max(0, y0 - margin), min(ny, y1 + margin), max(0, x0 - margin), min(nx, x1 + margin)
        part = restore_image(image[wy0:wy1, wx0:wx1], model, psf_kernel=match.kernel, psf_fwhm=match.kernel_fwhm,
                             **keys)
        w = np.outer(edge_ramp((wy1 - wy0) * scale, 2 * (y0 - wy0) * scale, 2 * (wy1 - y1) * scale),
                     edge_ramp((wx1 - wx0) * scale, 2 * (x0 - wx0) * scale, 2 * (wx1 - x1) * scale))
        window = (slice(wy0 * scale, wy1 * scale), slice(wx0 * scale, wx1 * scale))
        total[window] += w * np.nan_to_num(part.sr)
        weight[window] += w
        if uncert is not None:
            uncert[window] += w * np.nan_to_num(part.uncert)
        if progress is not None:
            progress("tiles", k + 1, len(cells))
    nan = ~np.isfinite(np.repeat(np.repeat(image, scale, axis=0), scale, axis=1))
    sr = np.where(nan, np.nan, total / weight).astype(np.float32)
    if uncert is not None:
        uncert = np.where(nan, np.nan, uncert / weight).astype(np.float32)
    lo, hi = percentile_limits(image)
    return Restored(sr, uncert, lo, hi)


def deblur_file(
    path: str | Path,
    out_dir: str | Path,
    options: DeblurOptions | None = None,
    *,
    progress: ProgressCallback = None,
    **keys: Any,
) -> FileResult:
    """Deblur one FITS file into ``out_dir/<stem>_deblur.fits`` (``.fits.fz`` with ``compress``).

    Parameters
    ----------
    path : str or Path
        Input FITS (``.fits``, ``.fits.gz``, ``.fz``); its first 2-D image HDU.
    out_dir : str or Path
    options : DeblurOptions, optional
        Model, PSF and settings; ``keys`` (option keys such as ``psf=...``,
        ``samples=4``) override its fields. The batch keys (``workers``,
        ``scheduler``, ``dask_local``) do not apply to one file.
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

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> work = Path(tempfile.mkdtemp())
    >>> fits.writeto(work / "field.fits", np.random.default_rng(2).normal(10.0, 1.0, (40, 40)).astype(np.float32))
    >>> result = deblur_file(work / "field.fits", work / "out", device="cpu", psf=PSF(fwhm=3.0), target_fwhm=0)
    >>> result.status, Path(result.output).name
    ('done', 'field_deblur.fits')
    >>> deblur_file(work / "field.fits", work / "out", device="cpu", psf=PSF(fwhm=3.0), target_fwhm=0).status
    'skipped'
    """
    from .checkpoint import load_model_cached, resolve_device
    from .fits_io import read_image
    from .fits_out import (add_provenance, clean_header, existing_matches, output_path, rescale_wcs, standard_cards,
                           write_output)

    o = replace(options or DeblurOptions(), **keys) if keys or options is None else options
    start = time.perf_counter()
    path = Path(path)
    out = output_path(path, out_dir, compress=o.compress, hdu=o.hdu, plane=o.plane)
    if out.resolve() == path.resolve():
        raise InputError(f"{path}: output would overwrite the input; choose another out_dir")
    device = resolve_device(o.device)
    model, info = load_model_cached(str(o.model), device=device)
    psf, image = o.psf.absolute(), None
    scale = psf.file_pixscale() if psf.image_pixscale is None else None
    if scale is not None:
        # a kernel that states its pixel scale is resampled to this image's: part of the output's identity
        image = read_image(path, hdu=o.hdu, plane=o.plane, min_size=8)
        psf = dataclasses.replace(psf, pixscale=scale).for_image(image.header, path)  # the card read once
    # the request, not what was measured: the same call on the same file is skipped, another target is not
    psf_id = psf.identity() + (f" on a {o.psf_grid}x{o.psf_grid} grid" if o.psf_grid > 1 else "") + (
        f"; output PSF FWHM {o.target_fwhm:g}px" if o.target_fwhm else "; no output PSF")
    if o.ignore_psf_check:
        psf_id += "; checks ignored"
    if out.is_dir():
        raise InputError(f"{out}: a directory stands where the output file goes; move it or choose another out_dir")
    samples = o.samples or (CATALOG_SAMPLES if o.catalog else 0)
    sources = catalog_path(out) if o.catalog else None
    if out.exists() and not o.overwrite:
        if existing_matches(out, sha256=info["sha256"], psf_id=psf_id, consistency=o.consistency, samples=samples,
                            overlap=o.overlap, uncertainty_scale=(info.get("uncertainty") or {}).get("scale", 1.0)) \
                and (sources is None or sources.is_file()):
            return FileResult(str(path), str(out), "skipped", "done before with this model, PSF and settings")
        raise InputError(f"{out}: output exists and was not made with this model and PSF, or with other "
                         "consistency/samples/overlap settings (overwrite=True replaces it)")

    if image is None:
        image = read_image(path, hdu=o.hdu, plane=o.plane, min_size=8)
    if "ASRVERS" in image.header and not o.allow_astrosr_input:
        raise InputError(f"{path}: already an astrosr output (ASRVERS {image.header['ASRVERS']}); deblurring it again "
                         "is refused (allow_astrosr_input=True allows it)")
    restored = deblur_image(image.data, model, psf=psf, target_fwhm=o.target_fwhm, header=image.header,
                            name=str(path), ignore_psf_check=o.ignore_psf_check, consistency=o.consistency,
                            overlap=o.overlap, samples=samples, device=device, progress=progress, model_info=info,
                            psf_grid=o.psf_grid, catalog=o.catalog)
    scale = int(getattr(model, "scale", 1))
    megapixels = image.data.size / 1e6
    mask = (~np.isfinite(image.data)).astype(np.uint8)
    if scale > 1:
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
    image.data = None  # free the float64 input before the float32 copies and the write
    sr = restored.sr.astype(np.float32, copy=False)
    uncert = None if restored.uncert is None else restored.uncert.astype(np.float32, copy=False)
    lo, hi, match, observer = restored.blu_lo, restored.blu_hi, restored.psf, restored.catalog
    del restored
    header, fixed, dropped = standard_cards(clean_header(image.header, image_axes_only=image.plane is not None))
    if fixed or dropped:
        log.warning("%s: %s", path, "; ".join(
            part for part in (f"fixed {len(fixed)} header card(s) that broke the FITS standard ({', '.join(fixed)})" if fixed
                              else "", f"dropped {len(dropped)} that could not be fixed ({', '.join(dropped)})" if dropped
                              else "") if part))
    header = rescale_wcs(header, scale)
    add_provenance(
        header,
        image=image,
        info=info,
        psf_id=psf_id,
        trained_for=trained_for(info),
        consistency=o.consistency,
        overlap=o.overlap,
        samples=samples,
        scale=scale,
        lo=lo,
        hi=hi,
        cards=match.cards(),
        history=match.history(),
    )
    if sources is not None:
        # before the image: an output file on disk is what marks an input as done
        from astropy.wcs import WCS

        from . import __version__
        from .catalog import write_catalog

        table = observer.table(WCS(header), bunit=header.get("BUNIT"))
        table.meta.update({"image": out.name, "input": path.name, "astrosr_version": __version__,
                           "model_sha256": info["sha256"]})
        write_catalog(sources, table)
    write_output(out, sr, header, mask, uncert, compress=o.compress, overwrite=o.overwrite)
    return FileResult(str(path), str(out), "done", "", time.perf_counter() - start, megapixels)
