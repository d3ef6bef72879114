"""The bench-v1 scorer: per-tile SSIM/MSE/PSNR, aperture flux error and spurious sources.

Everything here follows bench-v1 (``benchmarks/README.md``, sections
Normalisation to Report rows and baselines) to the letter: ORI's 0.5/99.9
percentiles map every image to [0, 1] (clipped) for the pixel metrics on
128x128 non-overlapping tiles, while the flux error and the spurious-source
count work on linear, background-subtracted pixels. What depends on ORI alone
(tiles, source lists, ORI's aperture fluxes) is computed once in a
:class:`Reference` and reused for every method scored against it. The
scorer is kept together in one module so that every number of a bench-v1
row can be checked against the protocol in one place.

Examples
--------
>>> import numpy as np
>>> from astrosr import metrics
>>> ori = np.random.default_rng(0).normal(100.0, 5.0, (256, 256))
>>> ref = metrics.reference(ori)
>>> row = metrics.summarise([metrics.score(ref, ori)])
>>> row.n_tiles, row.ssim, row.mse
(4, 1.0, 0.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.detection import DAOStarFinder
from photutils.utils import NoDetectionsWarning
from scipy.spatial import cKDTree
from skimage.metrics import structural_similarity

from .degrade import background_stats, percentile_limits
from .errors import InputError
from .tiling import extract_tiles, grid_origins, nan_free

__all__ = [
    "BENCH_TILE",
    "Reference",
    "ImageScore",
    "FieldScore",
    "reference",
    "find_sources",
    "P_CONFIDENT",
    "detected",
    "matched_sources",
    "source_trust",
    "normalise",
    "tile_metrics",
    "score",
    "score_image",
    "summarise",
]

BENCH_TILE = 128
FWHM = 4.0
DETECT_SIGMA = 10.0
REFERENCE_SIGMA = 5.0
EDGE_MARGIN = 12
APERTURE_RADIUS = 6.0
MATCH_RADIUS = 3.0


def normalise(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """bench-v1's scoring map ``clip((x - lo) / (hi - lo), 0, 1)`` (NaN stays NaN).

    Parameters
    ----------
    image : ndarray
        Any image scored against ORI, in ORI's linear units.
    lo, hi : float
        ORI's 0.5 / 99.9 percentiles (:attr:`Reference.lo`, :attr:`Reference.hi`).

    Returns
    -------
    ndarray
        The image in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> normalise(np.array([0.0, 5.0, 20.0, np.nan]), 0.0, 10.0)
    array([0. , 0.5, 1. , nan])
    """
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def find_sources(
    data: np.ndarray, threshold: float, *, margin: int | None = EDGE_MARGIN, shape_limits: bool = True,
    min_separation: float | None = None,
) -> np.ndarray:
    """``(n, 2)`` array of ``(x, y)`` centroids found by DAOStarFinder (FWHM 4 px).

    Parameters
    ----------
    data : ndarray
        Background-subtracted linear image; NaN pixels are masked.
    threshold : float
        Absolute detection threshold (bench-v1: 10 std, or 5 std for the
        reference list).
    margin : int or None
        Keep centroids in ``[margin, n - 1 - margin]`` on both axes (None: all).
    shape_limits : bool
        False turns DAOStarFinder's sharpness and roundness limits off.
    min_separation : float or None
        DAOStarFinder's minimum separation of two sources (px); None keeps
        photutils' default (2.5 fwhm since photutils 3.0), which bench-v1's
        figures were computed with.

    Returns
    -------
    ndarray (n, 2)
        ``(x, y)`` centroids, 0-based pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import moffat_psf
    >>> image = np.random.default_rng(0).normal(0.0, 1.0, (64, 64))
    >>> star = moffat_psf(4.0, size=9)
    >>> image[28:37, 28:37] += 200.0 * star / star.max()
    >>> find_sources(image, 10.0).round(1)
    array([[32., 32.]])
    """
    limits = {} if shape_limits else {"sharpness_range": (-np.inf, np.inf), "roundness_range": (-np.inf, np.inf)}
    finder = DAOStarFinder(threshold=threshold, fwhm=FWHM, min_separation=min_separation, **limits)
    bad = np.isnan(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        table = finder(data, mask=bad if bad.any() else None)
    if table is None or len(table) == 0:
        return np.empty((0, 2))
    xy = np.column_stack([np.asarray(table["x_centroid"], float), np.asarray(table["y_centroid"], float)])
    if margin is not None:
        ny, nx = data.shape
        keep = (
            (xy[:, 0] >= margin) & (xy[:, 0] <= nx - 1 - margin) & (xy[:, 1] >= margin) & (xy[:, 1] <= ny - 1 - margin)
        )
        xy = xy[keep]
    return xy


def _aperture_sums(data, positions):
    if len(positions) == 0:
        return np.empty(0)
    return np.asarray(aperture_photometry(data, CircularAperture(positions, r=APERTURE_RADIUS))["aperture_sum"], float)


@dataclass
class Reference:
    """Everything bench-v1 derives from ORI alone, computed once per image.

    Attributes
    ----------
    ori : ndarray
        ORI in linear units (float64, NaN for bad pixels).
    lo, hi : float
        ORI's 0.5 / 99.9 percentiles (the scoring normalisation).
    mean, median, std : float
        ORI's sigma-clipped background statistics.
    origins : list of (int, int)
        Scored tile origins (grid from (0, 0), NaN-free in ORI).
    ori_tiles : ndarray (N, tile, tile)
        ORI's normalised tiles.
    sources : ndarray (n, 2)
        ``(x, y)`` of the flux sources (10 sigma, shape limits on, 12 px
        margin, NaN-free aperture in ORI).
    ori_flux : ndarray (n,)
        ORI's aperture sums at ``sources`` on ``ORI - median``.
    reference_xy : ndarray (m, 2)
        ORI's 5-sigma peaks with shape limits off: the spurious-source
        reference list.
    tile : int
    """

    ori: np.ndarray
    lo: float
    hi: float
    mean: float
    median: float
    std: float
    origins: list
    ori_tiles: np.ndarray
    sources: np.ndarray
    ori_flux: np.ndarray
    reference_xy: np.ndarray
    tile: int = BENCH_TILE
    _tree: object = field(default=None, repr=False)

    @property
    def n_sources(self):
        """Number of ORI's 10-sigma (flux) sources: the spurious-fraction denominator."""
        return len(self.sources)

    def near_reference(self, xy):
        """True for each ``(x, y)`` that has a reference source within 3 px."""
        if len(xy) == 0:
            return np.zeros(0, bool)
        if len(self.reference_xy) == 0:
            return np.zeros(len(xy), bool)
        if self._tree is None:
            self._tree = cKDTree(self.reference_xy)
        dist, _ = self._tree.query(xy, k=1)
        return dist <= MATCH_RADIUS


def reference(ori: np.ndarray, *, tile: int = BENCH_TILE) -> Reference:
    """Build the :class:`Reference` of one original image.

    Parameters
    ----------
    ori : ndarray (H, W)
        The original image, linear units, NaN for bad pixels.
    tile : int
        Tile side (bench-v1: 128).

    Returns
    -------
    Reference

    Raises
    ------
    InputError
        ORI has no finite pixel or a constant one (no normalisation exists).

    Examples
    --------
    >>> import numpy as np
    >>> ori = np.random.default_rng(0).normal(100.0, 5.0, (256, 300))
    >>> ori[0, 0] = np.nan
    >>> ref = reference(ori)
    >>> ref.origins, ref.ori_tiles.shape
    ([(0, 128), (128, 0), (128, 128)], (3, 128, 128))
    """
    ori = np.asarray(ori, dtype=np.float64)
    if ori.ndim != 2 or not np.isfinite(ori).any():
        raise InputError(f"ORI must be a 2-D image with finite pixels, got shape {ori.shape}")
    lo, hi = percentile_limits(ori)
    if not hi > lo:
        raise InputError(f"ORI is constant between its 0.5/99.9 percentiles (lo=hi={lo:g}); it cannot be scored")
    mean, median, std = background_stats(ori)
    origins = nan_free(ori, grid_origins(ori.shape, tile), tile)
    sub = ori - median
    sources = find_sources(sub, DETECT_SIGMA * std)
    flux = _aperture_sums(sub, sources)
    keep = np.isfinite(flux)
    reference_xy = find_sources(sub, REFERENCE_SIGMA * std, margin=None, shape_limits=False)
    return Reference(
        ori=ori,
        lo=lo,
        hi=hi,
        mean=mean,
        median=median,
        std=std,
        origins=origins,
        ori_tiles=extract_tiles(normalise(ori, lo, hi), origins, tile),
        sources=sources[keep],
        ori_flux=flux[keep],
        reference_xy=reference_xy,
        tile=tile,
    )


#: A source with p_detect at least this is one the posterior draws agree on
P_CONFIDENT = 0.9


def detected(ref: Reference, image: np.ndarray) -> np.ndarray:
    """bench-v1's detections in a restoration: ``find_sources(image - median, 10 std)`` with ORI's statistics.

    The list the spurious count of :func:`score` judges.
    """
    return find_sources(np.asarray(image, dtype=np.float64) - ref.median, DETECT_SIGMA * ref.std)


def matched_sources(ref: Reference, xy: np.ndarray) -> int:
    """Number of ORI's 10-sigma sources with one of ``xy`` within 3 px (completeness)."""
    if len(xy) == 0 or len(ref.sources) == 0:
        return 0
    dist, _ = cKDTree(np.asarray(xy).reshape(-1, 2)).query(ref.sources, k=1)
    return int(np.count_nonzero(dist <= MATCH_RADIUS))


def source_trust(ref: Reference, xy: np.ndarray, p_detect: np.ndarray) -> dict[str, int]:
    """Spurious counts and completeness of a restoration's sources, all and with ``p_detect >= 0.9``.

    Parameters
    ----------
    ref : Reference
    xy : ndarray (n, 2)
        The restoration's detections (:func:`detected`).
    p_detect : ndarray (n,)
        Fraction of posterior draws finding each again.

    Returns
    -------
    dict
        ``detected``, ``spurious`` (no ORI 5-sigma peak within 3 px),
        ``confident`` (p_detect >= 0.9), ``spurious_confident``,
        ``complete_confident`` (ORI 10-sigma sources matched by a confident
        source), ``n_sources`` (ORI's 10-sigma sources: the denominator).

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import moffat_psf
    >>> ori = np.random.default_rng(0).normal(0.0, 1.0, (128, 128))
    >>> star = moffat_psf(4.0, size=9)
    >>> ori[60:69, 40:49] += 300.0 * star / star.max()
    >>> ref = reference(ori)
    >>> source_trust(ref, np.array([[44.0, 64.0], [100.0, 20.0]]), np.array([1.0, 0.2]))
    {'detected': 2, 'spurious': 1, 'confident': 1, 'spurious_confident': 0, 'complete_confident': 1, 'n_sources': 1}
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    confident = np.asarray(p_detect) >= P_CONFIDENT
    near = ref.near_reference(xy)
    return {
        "detected": int(len(xy)),
        "spurious": int(np.count_nonzero(~near)),
        "confident": int(np.count_nonzero(confident)),
        "spurious_confident": int(np.count_nonzero(~near[confident])),
        "complete_confident": matched_sources(ref, xy[confident]),
        "n_sources": int(ref.n_sources),
    }


def tile_metrics(x_tiles: np.ndarray, ori_tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile ``(ssim, mse, psnr)`` arrays of normalised tiles (PSNR inf where MSE is 0).

    Parameters
    ----------
    x_tiles, ori_tiles : ndarray (N, tile, tile)
        The method's and ORI's tiles, both normalised by :func:`normalise`.

    Returns
    -------
    (ndarray, ndarray, ndarray)
        SSIM (skimage, data range 1, 7x7 window), MSE and PSNR per tile.

    Examples
    --------
    >>> import numpy as np
    >>> tiles = np.random.default_rng(0).uniform(0.0, 1.0, (2, 16, 16))
    >>> ssim, mse, psnr = tile_metrics(tiles, tiles)
    >>> ssim, mse, psnr
    (array([1., 1.]), array([0., 0.]), array([inf, inf]))
    """
    n = len(ori_tiles)
    ssim = np.empty(n)
    mse = np.empty(n)
    for i in range(n):
        ssim[i] = structural_similarity(x_tiles[i], ori_tiles[i], data_range=1.0)
        mse[i] = np.mean((x_tiles[i] - ori_tiles[i]) ** 2)
    with np.errstate(divide="ignore"):
        psnr = np.where(mse > 0, 10.0 * np.log10(1.0 / np.where(mse > 0, mse, 1.0)), np.inf)
    return ssim, mse, psnr


@dataclass
class ImageScore:
    """bench-v1 scores of one image (one method against one ORI).

    Attributes
    ----------
    origins : list of (int, int)
        Tile origins (y, x) scored.
    ssim, mse, psnr : ndarray (n_tiles,)
        Per-tile metrics.
    flux_err : ndarray (n_sources,)
        ``|F_x / F_ori - 1|`` per flux source.
    n_detected : int
        10-sigma sources found in the image (12 px margin, shape limits on).
    n_spurious : int
        Of those, the ones with no ORI reference peak within 3 px.
    n_sources : int
        ORI's 10-sigma sources (the denominator of the spurious fraction).
    """

    origins: list
    ssim: np.ndarray
    mse: np.ndarray
    psnr: np.ndarray
    flux_err: np.ndarray
    n_detected: int
    n_spurious: int
    n_sources: int

    @property
    def n_tiles(self):
        return len(self.origins)

    def summary(self):
        """Per-image row: see :func:`summarise`."""
        return summarise([self])


def score(ref: Reference, image: np.ndarray) -> ImageScore:
    """Score one image (BLU, SR, a baseline...) against its :class:`Reference`.

    Parameters
    ----------
    ref : Reference
    image : ndarray
        Same shape as ORI, linear (physical) units.

    Returns
    -------
    ImageScore

    Raises
    ------
    InputError
        ``image`` and ORI differ in shape.

    Examples
    --------
    >>> import numpy as np
    >>> ori = np.random.default_rng(0).normal(100.0, 5.0, (256, 256))
    >>> result = score(reference(ori), ori + 1.0)
    >>> result.n_tiles, bool(result.mse.max() > 0), result.n_spurious
    (4, True, 0)
    """
    image = np.asarray(image, dtype=np.float64)
    if image.shape != ref.ori.shape:
        raise InputError(f"image shape {image.shape} differs from ORI's {ref.ori.shape}")
    tiles = extract_tiles(normalise(image, ref.lo, ref.hi), ref.origins, ref.tile)
    ssim, mse, psnr = tile_metrics(tiles, ref.ori_tiles)
    sub = image - ref.median
    flux_err = np.abs(_aperture_sums(sub, ref.sources) / ref.ori_flux - 1.0)
    found = detected(ref, image)
    spurious = int(np.count_nonzero(~ref.near_reference(found)))
    return ImageScore(
        origins=list(ref.origins),
        ssim=ssim,
        mse=mse,
        psnr=psnr,
        flux_err=flux_err,
        n_detected=len(found),
        n_spurious=spurious,
        n_sources=ref.n_sources,
    )


def score_image(ori: np.ndarray | None, candidates: dict[str, np.ndarray], *,
                ref: Reference | None = None) -> dict[str, ImageScore]:
    """Score several restorations of one image against ORI, sharing ORI's work.

    Parameters
    ----------
    ori : ndarray
        The original image (ignored when ``ref`` is given).
    candidates : dict of str -> ndarray
        Method name -> image in ORI's units and shape.
    ref : Reference, optional
        A precomputed :func:`reference` of ``ori``.

    Returns
    -------
    dict of str -> ImageScore

    Examples
    --------
    >>> import numpy as np
    >>> ori = np.random.default_rng(0).normal(100.0, 5.0, (128, 128))
    >>> scores = score_image(ori, {"ORI": ori, "ORI + 1": ori + 1.0})
    >>> {name: s.n_tiles for name, s in scores.items()}
    {'ORI': 1, 'ORI + 1': 1}
    """
    ref = ref if ref is not None else reference(ori)
    return {name: score(ref, image) for name, image in candidates.items()}


@dataclass
class FieldScore:
    """A bench-v1 report row over one or more images.

    ``ssim``, ``mse``, ``psnr`` are means over all tiles; ``flux_err`` is the
    median over all sources (None when there is none); ``spurious_frac`` is
    total spurious / total ORI 10-sigma sources (None when there is none).
    """

    n_images: int
    n_tiles: int
    ssim: float
    mse: float
    psnr: float
    flux_err: float | None
    n_sources: int
    n_spurious: int
    spurious_frac: float | None

    def to_dict(self) -> dict:
        """JSON-ready dict: a non-finite number (PSNR of an exact match) becomes None."""
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in self.__dict__.items()}


def summarise(scores: Iterable[ImageScore]) -> FieldScore:
    """Pool :class:`ImageScore` objects into one :class:`FieldScore` (bench-v1 field rule).

    The tiles and sources of every image are pooled: a field's SSIM, MSE
    and PSNR are means over all its tiles (not means of image means), its
    flux error the median over all its sources.

    Parameters
    ----------
    scores : iterable of ImageScore

    Returns
    -------
    FieldScore

    Examples
    --------
    >>> import numpy as np
    >>> ori = np.random.default_rng(0).normal(100.0, 5.0, (128, 128))
    >>> row = summarise([score(reference(ori), ori)])
    >>> row.to_dict()["psnr"], row.flux_err, row.spurious_frac  # an exact match; no flux source
    (None, None, None)
    """
    scores = list(scores)
    ssim = np.concatenate([s.ssim for s in scores]) if scores else np.empty(0)
    mse = np.concatenate([s.mse for s in scores]) if scores else np.empty(0)
    psnr = np.concatenate([s.psnr for s in scores]) if scores else np.empty(0)
    flux = np.concatenate([s.flux_err for s in scores]) if scores else np.empty(0)
    n_sources = int(sum(s.n_sources for s in scores))
    n_spurious = int(sum(s.n_spurious for s in scores))
    nan = float("nan")
    return FieldScore(
        n_images=len(scores),
        n_tiles=int(len(ssim)),
        ssim=float(ssim.mean()) if len(ssim) else nan,
        mse=float(mse.mean()) if len(mse) else nan,
        psnr=float(psnr.mean()) if len(psnr) else nan,
        flux_err=float(np.median(flux)) if len(flux) else None,
        n_sources=n_sources,
        n_spurious=n_spurious,
        spurious_frac=n_spurious / n_sources if n_sources else None,
    )
