"""The image's PSF, measured from its own stars (``astrosr psf``, ``deblur --psf auto``).

Kept together as one module: the star selection, the two fits and the
grid are one measurement.

For each image (or each region of an N x N grid):

1. a first FWHM from the resolution stars (:mod:`astrosr.stars`) sets the
   stamp size, the finder's FWHM, the isolation radius and the edge margin;
2. PSF stars: ``DAOStarFinder`` sources whose peak is above ``threshold``
   times the background std, with no other source (5 sigma) within the
   isolation radius, away from the edges, and not saturated: a peak at or
   above 0.9 x ``SATURATE`` when the header has it (or ``saturation`` is
   given), or a flat-topped core (the data's peak below 0.9 x the fitted
   model's, or three pixels at the peak value); stars whose FWHM is an outlier of the rest (blends,
   non-linear cores) are dropped by sigma clipping;
3. an elliptical Moffat, integrated over each pixel, fitted to each
   star (astropy.modeling, TRF): the PSF's FWHM (geometric mean of the two
   axes), beta, ellipticity ``1 - b/a`` and angle are the medians;
4. an empirical PSF from photutils ``EPSFBuilder`` on the same stars.

The kernel (odd side, unit sum, pixel-integrated, at the image's sampling)
is the fitted Moffat (``method='moffat'``, smooth: the default, and what
``deblur --psf auto`` removes) or the ePSF (``method='epsf'``).

Examples
--------
>>> from astrosr.simulate import star_field
>>> image = star_field(fwhm=3.0, beta=3.0, seed=1)
>>> psf = measure_psf(image)
>>> round(psf.fwhm, 1), psf.n_stars >= 5
(3.0, True)
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import check_options, option, replace
from .errors import InputError
from .psf import SUBPIXELS, fwhm_of_gamma, kernel_side, moffat_kernel, pixel_moffat
from .stars import background, nearest_distance, resolution_stars, star_fwhm

log = logging.getLogger(__name__)

__all__ = ["PsfOptions", "MeasuredPSF", "measure_psf", "write_psf", "psf_file", "plot_psf", "measure_files"]

_NEIGHBOUR_SIGMA = 5.0
_SATURATION_FRACTION = 0.9
_FLAT_TOP = 0.9
#: below this FWHM (px) a PSF is undersampled: the pixel grid does not carry its shape
UNDERSAMPLED_FWHM = 2.0

#: the Moffat fit's range of beta: a star field's median at the lower end is no stellar PSF (at the upper, a Gaussian)
BETA_BOUNDS = (1.1, 10.0)


@dataclass(frozen=True)
class PsfOptions:
    """How a PSF is measured from an image's stars (``astrosr psf``; ``deblur --psf auto``).

    Attributes
    ----------
    grid : int
        Measure per region of an N x N grid as well as over the whole image.
    threshold : float
        A PSF star's peak above this many background std.
    isolation : float
        No other source within this radius (px); 0: 3 x the first FWHM (at least 6 px).
    saturation : float or None
        The detector's saturation level in the image's units; None: the
        ``SATURATE`` card when present, else flat-topped cores only.
    min_stars : int
        Fewer usable stars is an error.
    max_stars : int
        The brightest usable stars kept (after the outlier clip fewer may remain).
    method : {'moffat', 'epsf'}
        The kernel: the fitted Moffat, or the empirical PSF.
    hdu, plane
        The image's HDU and cube plane, as in deblur.
    overwrite : bool
        Replace existing outputs.
    """

    grid: int = option(1, minimum=1, help="Also measure per region of an N x N grid [1].")
    threshold: float = option(20.0, minimum=1.0, help="PSF star peak above this many background std [20].")
    isolation: float = option(0.0, minimum=0.0, help="No other source within this radius, px (0: 3 x FWHM) [0].")
    saturation: float | None = option(None, help="Saturation level in the image's units [SATURATE card].")
    min_stars: int = option(5, minimum=1, help="Fewer usable stars is an error [5].")
    max_stars: int = option(40, minimum=1, help="The brightest usable stars kept [40].")
    method: str = option("moffat", choices=("moffat", "epsf"), help="Kernel: fitted Moffat or empirical PSF [moffat].")
    hdu: int | str | None = option(None, help="HDU index or EXTNAME of the image [first 2-D image].")
    plane: int | None = option(None, minimum=0, help="Plane of a 3-D cube.")
    overwrite: bool = option(False, help="Replace existing outputs.")

    def __post_init__(self):
        check_options(self)


@dataclass
class MeasuredPSF:
    """A PSF measured from an image's stars.

    Attributes
    ----------
    kernel : ndarray
        Odd side, unit sum, at the image's sampling (``method``'s).
    fwhm, beta, ellipticity, angle : float
        The Moffat fit (FWHM in px, the geometric mean of the axes;
        ellipticity ``1 - b/a``; angle of the major axis in degrees from +x).
    n_stars : int
        Stars the medians are over.
    method : str
    positions : ndarray (n, 2)
        ``(x, y)`` of those stars.
    fwhms : ndarray (n,)
        Each star's fitted FWHM.
    epsf : ndarray or None
        The empirical PSF at the image's sampling (same side as ``kernel``),
        when it was built.
    grid : list of dict
        Per region of the grid (row-major from the lower left): ``y0, y1, x0,
        x1, fwhm, beta, ellipticity, angle, n_stars`` (NaN where the region
        has fewer than ``min_stars``; ``n_stars`` its usable stars either way).
    notes : list of str
        Warnings: an undersampled PSF, regions with too few stars.
    resolution : tuple
        ``(positions, fwhm)`` of the image's resolution stars (:mod:`astrosr.stars`), for the checks that follow.
    """

    kernel: np.ndarray
    fwhm: float
    beta: float
    ellipticity: float
    angle: float
    n_stars: int
    method: str
    positions: np.ndarray
    fwhms: np.ndarray
    epsf: np.ndarray | None = None
    grid: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    resolution: tuple = ()

    def describe(self) -> str:
        """One line for logs and FITS HISTORY.

        Examples
        --------
        >>> MeasuredPSF(np.ones((1, 1)), 2.8, 3.1, 0.05, 12.0, 40, "moffat", np.empty((0, 2)), np.empty(0)).describe()
        'measured Moffat FWHM=2.8px beta=3.1 e=0.05 from 40 stars'
        """
        return (f"measured Moffat FWHM={self.fwhm:.3g}px beta={self.beta:.3g} e={self.ellipticity:.2f} "
                f"from {self.n_stars} stars" + (" (ePSF kernel)" if self.method == "epsf" else ""))


@functools.lru_cache(maxsize=None)
def _pixel_moffat_model(subpixels: int):
    """The astropy model the stars are fitted with, built once per sampling (astropy on first use)."""
    from astropy.modeling import Fittable2DModel, Parameter

    class PixelMoffat(Fittable2DModel):
        amplitude = Parameter(default=1.0)
        x_0 = Parameter(default=0.0)
        y_0 = Parameter(default=0.0)
        gamma = Parameter(default=2.0, bounds=(0.2, 50.0))
        q = Parameter(default=0.95, bounds=(0.3, 1.0))
        theta = Parameter(default=0.0)
        beta = Parameter(default=3.0, bounds=BETA_BOUNDS)

        @staticmethod
        def evaluate(x, y, amplitude, x_0, y_0, gamma, q, theta, beta):
            # a wide star changes little across a pixel: fewer sub-pixel samples keep the fit quick
            return pixel_moffat(x, y, amplitude, x_0, y_0, gamma, q, theta, beta, subpixels)

    return PixelMoffat


def _fit_star(stamp, half, *, subpixels=SUBPIXELS):
    """Moffat parameters of one stamp (``data - background``), plus whether its core looks flat-topped."""
    from astropy.modeling import fitting

    PixelMoffat = _pixel_moffat_model(subpixels)
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    good = np.isfinite(stamp)
    peak = float(np.nanmax(stamp))
    start = PixelMoffat(amplitude=peak * 1.2, gamma=max(0.5, half / 4), q=0.95, theta=0.3, beta=3.0)
    start.x_0.bounds = start.y_0.bounds = (-2.0, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fitting.TRFLSQFitter()(start, x[good], y[good], stamp[good], maxiter=200)
    q, theta = float(fit.q.value), float(fit.theta.value)  # q <= 1: theta is the major axis
    model_peak = float(np.max(fit(x, y)))
    plateau = int(np.count_nonzero(stamp[good] >= peak - 1e-3 * abs(peak)))  # clipped pixels share one value
    return {"fwhm": fwhm_of_gamma(float(fit.gamma.value), float(fit.beta.value)), "beta": float(fit.beta.value),
            "ellipticity": 1.0 - q, "angle": math.degrees(theta) % 180.0, "x": float(fit.x_0.value),
            "y": float(fit.y_0.value), "flat": peak < _FLAT_TOP * model_peak or plateau >= 3}


def _saturation_level(header, options):
    if options.saturation is not None:
        return float(options.saturation)
    if header is not None and "SATURATE" in header:
        try:
            return float(header["SATURATE"])
        except (TypeError, ValueError):
            return None
    return None


def _first_fwhm(image):
    """``(fwhm, stars)``: the resolution figure and its stars (an FWHM of 3 px without them)."""
    stars = resolution_stars(image)
    value = star_fwhm(image, stars) if len(stars) else None
    return (float(value) if value else 3.0), (stars, value)


def _candidates(data, std, fwhm, threshold):
    from photutils.detection import DAOStarFinder

    # every 5-sigma source counts as a neighbour: no shape limits (a blend is exactly what isolation is for)
    common = dict(fwhm=max(fwhm, 1.5), threshold=_NEIGHBOUR_SIGMA * std)
    try:
        finder = DAOStarFinder(**common, sharpness_range=None, roundness_range=None)
    except TypeError:  # photutils before 3.0
        finder = DAOStarFinder(**common, sharplo=-np.inf, sharphi=np.inf, roundlo=-np.inf, roundhi=np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = finder(data, mask=~np.isfinite(data))
    if table is None or len(table) == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    return tuple(np.asarray(table[k], dtype=np.float64) for k in ("x_centroid", "y_centroid", "peak"))


def _star_fits(data, raw, std, x, y, peak, keep, *, half, threshold, saturation, max_stars):
    """Fits of the usable PSF stars among ``keep``, brightest first, and the counts behind an error message.

    Each fit carries its star's ``(px, py)`` position in the image.
    """
    counts = {"bright": 0, "isolated": 0, "saturated": 0}
    order = [i for i in np.argsort(-peak, kind="stable") if keep[i]]
    subpixels = SUBPIXELS if half < 6 else 3 if half < 12 else 2  # a wide star changes little across a pixel
    fits_ = []
    for i in order:
        if peak[i] < threshold * std:
            continue
        counts["bright"] += 1
        cx, cy = int(round(x[i])), int(round(y[i]))
        stamp = data[cy - half : cy + half + 1, cx - half : cx + half + 1]
        if stamp.shape != (2 * half + 1, 2 * half + 1) or np.isnan(stamp).mean() > 0.1:
            continue
        counts["isolated"] += 1
        core = raw[cy - 1 : cy + 2, cx - 1 : cx + 2]
        if saturation is not None and np.nanmax(core) >= _SATURATION_FRACTION * saturation:
            counts["saturated"] += 1
            continue
        result = _fit_star(stamp, half, subpixels=subpixels)
        if result["flat"]:
            counts["saturated"] += 1
            continue
        fits_.append({**result, "px": cx + result["x"], "py": cy + result["y"]})
        if len(fits_) >= max_stars:
            break
    return fits_, counts


def _clipped(fits_):
    """Drop stars whose FWHM is a 3-sigma outlier (MAD) of the rest: blends, non-linear cores."""
    fwhm = np.array([f["fwhm"] for f in fits_])
    if len(fwhm) < 4:
        return np.ones(len(fwhm), bool)
    median = np.median(fwhm)
    mad = 1.4826 * np.median(np.abs(fwhm - median)) or 1e-3 * median
    return np.abs(fwhm - median) <= 3.0 * mad


def _combine(fits_):
    beta = float(np.median([f["beta"] for f in fits_]))
    ellipticity = np.array([f["ellipticity"] for f in fits_])
    angle = np.radians([f["angle"] for f in fits_])
    # the angle is an axis (mod 180 deg): average as 2-theta vectors weighted by each star's ellipticity
    c, s = np.sum(ellipticity * np.cos(2 * angle)), np.sum(ellipticity * np.sin(2 * angle))
    return {"fwhm": float(np.median([f["fwhm"] for f in fits_])), "beta": beta,
            "ellipticity": float(np.median(ellipticity)), "angle": float(np.degrees(0.5 * math.atan2(s, c)) % 180.0)}


def _epsf(data, positions, half, size):
    """photutils' empirical PSF of the stars at ``positions`` (stamps of side 2 half + 1), on a ``size`` kernel."""
    from astropy.nddata import NDData
    from astropy.table import Table
    from photutils.psf import EPSFBuilder, extract_stars

    table = Table({"x": positions[:, 0], "y": positions[:, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stars = extract_stars(NDData(np.nan_to_num(data)), table, size=(2 * half + 1, 2 * half + 1))
        result = EPSFBuilder(oversampling=2, maxiters=5, progress_bar=False)(stars)
    epsf = result.epsf if hasattr(result, "epsf") else result[0]
    reach = size // 2
    y, x = np.mgrid[-reach : reach + 1, -reach : reach + 1].astype(np.float64)
    kernel = np.where(np.maximum(abs(x), abs(y)) <= half, epsf.evaluate(x, y, flux=1.0, x_0=0.0, y_0=0.0), 0.0)
    kernel = np.clip(kernel, 0.0, None)
    return kernel / kernel.sum() if kernel.sum() > 0 else None


def _select(data, raw, std, fwhm0, options, saturation, *, cap):
    """Fits of up to ``cap`` usable PSF stars over the whole image, the stamp half-side and the error detail."""
    half = int(min(40, max(5, math.ceil(2.5 * fwhm0))))
    isolation = options.isolation or max(6.0, 3.0 * fwhm0)
    x, y, peak = _candidates(data, std, fwhm0, options.threshold)
    isolated = nearest_distance(x, y) > isolation
    ny, nx = data.shape
    margin = half + 1
    keep = isolated & (x >= margin) & (x < nx - margin) & (y >= margin) & (y < ny - margin)
    fits_, counts = _star_fits(data, raw, std, x, y, peak, keep, half=half, threshold=options.threshold,
                               saturation=saturation, max_stars=cap)
    detail = (f"{counts['bright']} source(s) above {options.threshold:g} sigma, {counts['isolated']} of them isolated "
              f"(no 5-sigma source within {isolation:.3g} px, {margin} px from the edges), {counts['saturated']} of "
              "those saturated or flat-topped" + (f" (SATURATE {saturation:g})" if saturation is not None else ""))
    return fits_, half, detail


def _kept(fits_, max_stars):
    """The brightest ``max_stars`` fits less the FWHM outliers."""
    fits_ = fits_[:max_stars]
    return [f for f, good in zip(fits_, _clipped(fits_)) if good]


def measure_psf(image: np.ndarray, options: PsfOptions | None = None, *, header=None, name: str = "image",
                with_epsf: bool = False, **keys: Any) -> MeasuredPSF:
    """Measure an image's PSF from its bright, isolated, unsaturated stars.

    Parameters
    ----------
    image : ndarray
        The image as observed (NaN for missing pixels).
    options : PsfOptions, optional
        ``keys`` override its fields (``grid=3``...).
    header : astropy.io.fits.Header, optional
        Its header: ``SATURATE`` is read from it.
    name : str
        The image's name in error messages.
    with_epsf : bool
        Also build the empirical PSF when the kernel is the Moffat (``astrosr psf`` writes both).

    Returns
    -------
    MeasuredPSF

    Raises
    ------
    InputError
        Fewer than ``min_stars`` usable stars (the message names the counts and thresholds).

    Examples
    --------
    >>> from astrosr.simulate import star_field
    >>> psf = measure_psf(star_field(fwhm=4.0, beta=2.5, seed=2), method="epsf")
    >>> psf.kernel.shape[0] % 2, round(float(psf.kernel.sum()), 6), round(psf.fwhm)
    (1, 1.0, 4)
    """
    o = replace(options or PsfOptions(), **keys) if keys or options is None else options
    raw = np.asarray(image, dtype=np.float64)
    median, std = background(raw)
    if not std > 0:
        raise InputError(f"{name}: no background noise to measure stars against (std 0)")
    data = raw - median
    fwhm0, resolution = _first_fwhm(raw)
    saturation = _saturation_level(header, o)
    # one fit per star: the whole image takes the brightest, each grid region its own
    every, half, detail = _select(data, raw, std, fwhm0, o, saturation, cap=max(o.max_stars, 15 * o.grid**2))
    fits_ = _kept(every, o.max_stars)
    if len(fits_) < o.min_stars:
        raise InputError(f"{name}: {len(fits_)} usable PSF star(s), {o.min_stars} needed: {detail}")
    params = _combine(fits_)
    positions = np.array([(f["px"], f["py"]) for f in fits_])
    size = kernel_side(params["fwhm"])
    moffat = moffat_kernel(params["fwhm"], params["beta"], ellipticity=params["ellipticity"], angle=params["angle"],
                           size=size)
    epsf = _epsf(data, positions, half, size) if o.method == "epsf" or with_epsf else None
    if o.method == "epsf" and epsf is None:
        raise InputError(f"{name}: the empirical PSF of {len(fits_)} stars has no positive sum")
    grid, notes = [], []
    if o.grid > 1:
        ny, nx = raw.shape
        need = 4 * (2 * half + 1)
        if min(ny, nx) / o.grid < need:
            raise InputError(f"{name}: grid {o.grid} makes regions of {min(ny, nx) / o.grid:.0f} px; each needs at "
                             f"least {need} px (4 star stamps of {2 * half + 1} px)")
        ys, xs = np.linspace(0, ny, o.grid + 1).astype(int), np.linspace(0, nx, o.grid + 1).astype(int)
        for j in range(o.grid):
            for i in range(o.grid):
                y0, y1, x0, x1 = int(ys[j]), int(ys[j + 1]), int(xs[i]), int(xs[i + 1])
                cell = _kept([f for f in every if x0 <= f["px"] < x1 and y0 <= f["py"] < y1], o.max_stars)
                enough = len(cell) >= o.min_stars
                values = _combine(cell) if enough else dict.fromkeys(params, float("nan"))
                grid.append({"y0": y0, "y1": y1, "x0": x0, "x1": x1, **values, "n_stars": len(cell)})
        short = sum(1 for c in grid if c["n_stars"] < o.min_stars)
        if short:
            notes.append(f"{short} of {len(grid)} regions have fewer than {o.min_stars} usable stars: no figure of "
                         "their own (deblur gives them the whole image's PSF)")
    result = MeasuredPSF(kernel=epsf if o.method == "epsf" else moffat, method=o.method, n_stars=len(fits_),
                         positions=positions, fwhms=np.array([f["fwhm"] for f in fits_]), epsf=epsf, grid=grid,
                         notes=notes, resolution=resolution, **params)
    log.info("%s: %s", name, result.describe())
    lo = BETA_BOUNDS[0]
    if result.beta <= 1.02 * lo:
        # wings no Moffat has: diffuse emission or blends taken for stars (the upper bound is a Gaussian
        # core, a real PSF)
        result.notes.append(f"Moffat beta {result.beta:.2f} at the fit's lower bound {lo:g}: these sources are not "
                            "stars of a Moffat PSF (a diffuse or non-stellar image?), so the measured PSF is doubtful; "
                            "state it with --psf or --psf-fwhm")
    if result.fwhm < UNDERSAMPLED_FWHM:
        seen = f" (stars {resolution[1]:.2f} px)" if resolution[1] else ""
        result.notes.append(f"PSF FWHM {result.fwhm:.2f} px before pixel integration{seen}: undersampled (below "
                            f"{UNDERSAMPLED_FWHM:g} px), so its shape is poorly constrained; a sharper image needs "
                            "super-resolution onto a finer grid")
    return result


def psf_file(path: str | Path, out_dir: str | Path, *, hdu=None, plane=None) -> Path:
    """``OUT/<stem>[_EXTNAME|_hduN][_pK]_psf.fits``: the kernel file :func:`write_psf` writes for ``path``.

    Examples
    --------
    >>> psf_file("raw/m51.fits.gz", "out").as_posix()
    'out/m51_psf.fits'
    """
    from .fits_out import output_path

    name = output_path(path, out_dir, hdu=hdu, plane=plane).name.replace("_deblur.fits", "_psf.fits")
    return Path(out_dir) / name


def write_psf(psf: MeasuredPSF, out: str | Path, *, source: str, overwrite: bool = False) -> Path:
    """Write the kernel FITS: primary = the kernel, cards FWHM/BETA/ELLIP/ANGLE/NSTARS/METHOD; ``EPSF``; ``GRID``.

    Atomic (temporary name, renamed when complete).
    """
    from astropy.io import fits
    from astropy.table import Table

    from . import __version__
    from .files import atomic_path
    from .provenance import utc_now

    header = fits.Header()
    header["PSFFWHM"] = (round(psf.fwhm, 4), "Moffat FWHM, px (geometric mean of the axes)")
    header["PSFBETA"] = (round(psf.beta, 4), "Moffat beta (power index)")
    header["PSFELLIP"] = (round(psf.ellipticity, 4), "ellipticity 1 - b/a")
    header["PSFANGLE"] = (round(psf.angle, 2), "major axis angle, deg from +x")
    header["PSFNSTAR"] = (psf.n_stars, "stars used")
    header["PSFMETH"] = (psf.method, "kernel: pixel-integrated Moffat fit, or ePSF")
    header["PSFSRC"] = (Path(source).name[:60], "image measured")
    header["ASRVERS"] = (__version__, "astrosr version")
    header["ASRDATE"] = (utc_now().strftime("%Y-%m-%dT%H:%M:%S"), "UTC date")
    hdus = [fits.PrimaryHDU(psf.kernel.astype(np.float32), header=header)]
    if psf.epsf is not None:
        hdus.append(fits.ImageHDU(psf.epsf.astype(np.float32), name="EPSF"))
    if psf.grid:
        hdus.append(fits.BinTableHDU(Table(rows=[tuple(c.values()) for c in psf.grid], names=list(psf.grid[0])),
                                     name="GRID"))
    with atomic_path(out, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp)
    return Path(out)


def plot_psf(psf: MeasuredPSF, image: np.ndarray, out: str | Path, *, title: str = "") -> Path:
    """PNG of a measurement: star stamps, the kernel (and ePSF), the radial profile with its fit, the FWHM map.

    Written atomically. The radial profile shows every star's pixels
    (background-subtracted, each scaled by its fitted peak) against the
    fitted Moffat's profile through the same pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_path

    data = np.asarray(image, dtype=np.float64) - background(image)[0]
    half = psf.kernel.shape[0] // 2
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    # the brightest stamps side by side, each scaled to its own peak
    stamps = []
    for x, y in psf.positions[:16]:
        cx, cy = int(round(x)), int(round(y))
        stamp = data[cy - 7 : cy + 8, cx - 7 : cx + 8]
        if stamp.shape == (15, 15):
            stamps.append(stamp / np.nanmax(stamp))
    if stamps:
        rows = [np.hstack(stamps[i : i + 4] + [np.zeros((15, 15))] * (4 - len(stamps[i : i + 4])))
                for i in range(0, len(stamps), 4)]
        axes[0].imshow(np.vstack(rows), origin="lower", cmap="magma", vmin=-0.05, vmax=1.0)
    axes[0].set_title(f"{len(stamps)} of {psf.n_stars} PSF stars (15x15, own peak)")
    shown = psf.epsf if psf.epsf is not None else psf.kernel
    axes[1].imshow(np.log10(np.clip(shown / shown.max(), 1e-4, None)), origin="lower", cmap="viridis")
    axes[1].set_title(("ePSF" if psf.epsf is not None else "kernel") + " (log10 of peak)")
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(x, y).ravel()
    for px, py in psf.positions[:10]:
        cx, cy = int(round(px)), int(round(py))
        stamp = data[cy - half : cy + half + 1, cx - half : cx + half + 1]
        if stamp.shape == psf.kernel.shape:
            ry = np.hypot(x - (px - cx), y - (py - cy)).ravel()
            axes[2].plot(ry, stamp.ravel() / np.nanmax(stamp), ".", ms=2, alpha=0.3, color="grey")
    profile = moffat_kernel(psf.fwhm, psf.beta, size=psf.kernel.shape[0])
    axes[2].plot(r, (profile / profile.max()).ravel(), ".", ms=3, color="C1", label="fitted Moffat (round)")
    axes[2].set_yscale("symlog", linthresh=1e-3)
    axes[2].set_xlim(0, min(half, 5 * psf.fwhm))
    axes[2].set_xlabel("radius (px)")
    axes[2].legend(loc="upper right")
    axes[2].set_title(f"FWHM {psf.fwhm:.2f} px, beta {psf.beta:.2f}, e {psf.ellipticity:.2f}")
    if psf.grid:
        n = int(round(math.sqrt(len(psf.grid))))
        fwhm_map = np.array([c["fwhm"] for c in psf.grid]).reshape(n, n)
        shown = axes[3].imshow(fwhm_map, origin="lower", cmap="coolwarm")
        for k, c in enumerate(psf.grid):
            axes[3].text(k % n, k // n, f"{c['fwhm']:.2f}\n{c['n_stars']} st", ha="center", va="center", fontsize=8)
        fig.colorbar(shown, ax=axes[3], label="FWHM (px)")
        axes[3].set_title(f"FWHM over a {n}x{n} grid")
    else:
        axes[3].hist(psf.fwhms, bins=15, color="C0")
        axes[3].axvline(psf.fwhm, color="C1")
        axes[3].set_xlabel("star FWHM (px)")
        axes[3].set_title("each star's fitted FWHM")
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or psf.describe())
    fig.tight_layout()
    with atomic_path(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(out)


def measure_files(paths: list[str | Path], out_dir: str | Path, options: PsfOptions | None = None, *,
                  progress=None, **keys: Any) -> list[dict]:
    """``astrosr psf``: measure each image's PSF; write ``OUT/<stem>_psf.fits`` and ``_psf.png``.

    Returns one row per image: ``input``, ``status`` ('done' or 'failed'),
    ``reason``, ``kernel``, ``fwhm``, ``beta``, ``ellipticity``, ``angle``,
    ``n_stars``. An image that cannot be read or measured is a failed row
    (its one-line reason); nothing is written for it.
    """
    from .fits_io import read_image
    from .files import check_output, make_dir
    from .progress import report

    o = replace(options or PsfOptions(), **keys) if keys or options is None else options
    out_dir = make_dir(out_dir)
    rows = []
    report(progress, "images", 0, len(paths))
    for k, path in enumerate(paths):
        row = {"input": str(path), "status": "failed", "reason": "", "kernel": None}
        try:
            out = psf_file(path, out_dir, hdu=o.hdu, plane=o.plane)
            check_output(out, overwrite=o.overwrite)
            image = read_image(path, hdu=o.hdu, plane=o.plane, min_size=16)
            psf = measure_psf(image.data, o, header=image.header, name=str(path), with_epsf=True)
            for note in psf.notes:
                log.warning("%s: %s", path, note)
            write_psf(psf, out, source=str(path), overwrite=o.overwrite)
            plot_psf(psf, image.data, out.with_suffix(".png"), title=f"{Path(path).name}: {psf.describe()}")
            row.update(status="done", kernel=str(out), fwhm=psf.fwhm, beta=psf.beta, ellipticity=psf.ellipticity,
                       angle=psf.angle, n_stars=psf.n_stars, grid=psf.grid)
        except InputError as exc:
            row["reason"] = str(exc).removeprefix(f"{path}: ")
        rows.append(row)
        report(progress, "images", k + 1, len(paths))
    return rows
