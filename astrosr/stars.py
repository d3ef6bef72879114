"""Stars of an image: the bright isolated ones, and how sharp they are.

Two users: the resolution figure (how sharp the stars come out of a
restoration: bench-v1's star FWHM column and the sky-v1 metrics), and the
PSF measurement of :mod:`astrosr.psf_measure`, which starts from the same
kind of star list.

The resolution figure (benchmark protocol, section "Resolution"):

* stars: ``DAOStarFinder(fwhm=3, threshold=30 std)`` on ``ref - median``
  (the reference's own sigma-clipped median and std); kept when more than
  15 px from every other source and from the edges; the brightest fifth by
  peak dropped (saturated or non-linear cores), then the next 40 by peak
  (:func:`resolution_stars`; fewer than 5: no figure);
* the FWHM of one star in an image ``x``: a ``Gaussian2D`` fitted with
  ``LevMarLSQFitter`` to the 15 x 15 cut-out of ``x - median`` centred on
  the star's rounded position, ``2.3548 sqrt(|sx sy|)``; the image's figure
  is the median over its stars, always at the reference's positions
  (:func:`star_fwhm`).

Examples
--------
>>> from astrosr.simulate import star_field
>>> field = star_field(fwhm=3.0, seed=501)
>>> stars = resolution_stars(field)
>>> len(stars) >= 5, round(star_fwhm(field, stars), 1)  # a Gaussian fit reads a Moffat's wings as width
(True, 3.5)
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["GAUSSIAN_FWHM", "nearest_distance", "resolution_stars", "star_fwhm", "star_fwhms", "background", "flux_ratio", "deepest_ring"]

#: FWHM / sigma of a Gaussian
GAUSSIAN_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
_FINDER_FWHM = 3.0
_THRESHOLD = 30.0
_ISOLATION = 15.0
_KEEP = 40
_MIN_STARS = 5
_STAMP = 15


def background(image: np.ndarray) -> tuple[float, float]:
    """``(median, std)`` of ``image``: astropy's sigma-clipped statistics (3 sigma), NaN pixels ignored.

    Examples
    --------
    >>> import numpy as np
    >>> median, std = background(np.random.default_rng(0).normal(10.0, 2.0, (200, 200)))
    >>> round(median, 1), round(std, 1)
    (10.0, 2.0)
    """
    from astropy.stats import sigma_clipped_stats

    _, median, std = sigma_clipped_stats(image, sigma=3.0, mask=~np.isfinite(image))
    return float(median), float(std)


def nearest_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each source's distance (px) to its nearest other source; infinite for a lone source.

    Examples
    --------
    >>> nearest_distance(np.array([0.0, 3.0, 10.0]), np.array([0.0, 4.0, 4.0])).tolist()
    [5.0, 5.0, 7.0]
    """
    if len(x) < 2:
        return np.full(len(x), np.inf)
    distance = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(distance, np.inf)
    return distance.min(axis=1)


def _isolated(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """Sources farther than ``radius`` from every other source and from the edges."""
    ny, nx = shape
    inside = (x > radius) & (x < nx - 1 - radius) & (y > radius) & (y < ny - 1 - radius)
    return inside & (nearest_distance(x, y) > radius)


def resolution_stars(ref: np.ndarray) -> np.ndarray:
    """``(n, 2)`` ``(x, y)`` positions of the resolution stars of ``ref``; empty when fewer than 5.

    Parameters
    ----------
    ref : ndarray
        The reference image: ORI for bench-v1, the input image as observed for
        sky-v1.

    Returns
    -------
    ndarray
        Up to 40 positions, brightest first (after the brightest fifth is dropped).
    """
    from photutils.detection import DAOStarFinder

    ref = np.asarray(ref, dtype=np.float64)
    median, std = background(ref)
    if not std > 0:
        return np.empty((0, 2))
    finder = DAOStarFinder(fwhm=_FINDER_FWHM, threshold=_THRESHOLD * std)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # photutils warns when it finds nothing
        table = finder(ref - median, mask=~np.isfinite(ref))
    if table is None or len(table) == 0:
        return np.empty((0, 2))
    x, y, peak = (np.asarray(table[k], dtype=np.float64) for k in ("x_centroid", "y_centroid", "peak"))
    keep = _isolated(x, y, ref.shape, _ISOLATION)
    x, y, peak = x[keep], y[keep], peak[keep]
    order = np.argsort(-peak, kind="stable")
    order = order[len(order) // 5 :][:_KEEP]
    if len(order) < _MIN_STARS:
        return np.empty((0, 2))
    return np.column_stack([x[order], y[order]])


def star_fwhms(image: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """FWHM (px) of a Gaussian2D fitted at each position of ``image`` (NaN where a fit fails).

    ``image`` minus its own sigma-clipped median; 15 x 15 cut-outs centred on
    the rounded positions; ``LevMarLSQFitter`` from amplitude = the cut-out's
    maximum, centre 0, sigma 1.5 px.
    """
    from astropy.modeling import fitting, models

    image = np.asarray(image, dtype=np.float64)
    data = image - background(image)[0]
    half = _STAMP // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    fitter = fitting.LevMarLSQFitter()
    out = np.full(len(positions), np.nan)
    for k, (x, y) in enumerate(np.asarray(positions, dtype=np.float64)):
        cx, cy = int(round(x)), int(round(y))
        if cy - half < 0 or cx - half < 0 or cy + half >= data.shape[0] or cx + half >= data.shape[1]:
            continue
        stamp = data[cy - half : cy + half + 1, cx - half : cx + half + 1]
        good = np.isfinite(stamp)
        if good.sum() < 10:
            continue
        start = models.Gaussian2D(amplitude=float(np.nanmax(stamp)), x_mean=0.0, y_mean=0.0, x_stddev=1.5, y_stddev=1.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a poor fit warns; its FWHM is still the figure's input
            fit = fitter(start, xx[good], yy[good], stamp[good])
        out[k] = GAUSSIAN_FWHM * np.sqrt(abs(float(fit.x_stddev.value) * float(fit.y_stddev.value)))
    return out


def star_fwhm(image: np.ndarray, positions: np.ndarray) -> float | None:
    """The resolution figure of ``image``: median star FWHM (px) at ``positions``; None without stars.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import gaussian_psf
    >>> image = np.zeros((64, 64))
    >>> image[25:40, 25:40] = gaussian_psf(3.0, size=15)
    >>> round(star_fwhm(image, np.array([[32.0, 32.0]])), 2)
    3.0
    """
    if len(positions) == 0:
        return None
    values = star_fwhms(image, positions)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def flux_ratio(before: np.ndarray, after: np.ndarray, positions: np.ndarray, radius: float) -> float | None:
    """Median aperture-flux ratio after / before at ``positions`` (sky-v1): each image minus its own median.

    Circular apertures of ``radius`` px (photutils, exact overlap).
    """
    from photutils.aperture import CircularAperture, aperture_photometry

    if len(positions) == 0:
        return None
    aperture = CircularAperture(np.asarray(positions, dtype=np.float64), r=radius)
    sums = [np.asarray(aperture_photometry(np.nan_to_num(x - background(x)[0]), aperture)["aperture_sum"], float)
            for x in (np.asarray(before, float), np.asarray(after, float))]
    good = sums[0] > 0
    return float(np.median(sums[1][good] / sums[0][good])) if good.any() else None


def deepest_ring(image: np.ndarray, positions: np.ndarray, fwhm: float, std: float, *, brightest: int = 10) -> float | None:
    """The deepest ring around the stars (sky-v1), in units of ``std`` (the input's background std).

    Per star, the minimum over radii 1.5-4 ``fwhm`` of the azimuthal mean of
    ``image - median`` in 1 px annuli; the median over the first
    ``brightest`` positions (the brightest kept stars come first).
    """
    if len(positions) == 0 or not std > 0:
        return None
    image = np.asarray(image, dtype=np.float64)
    data = image - background(image)[0]
    outer = int(np.ceil(4 * fwhm)) + 1
    depths = []
    for x, y in np.asarray(positions, dtype=np.float64)[:brightest]:
        cx, cy = int(round(x)), int(round(y))
        cut = data[max(cy - outer, 0) : cy + outer + 1, max(cx - outer, 0) : cx + outer + 1]
        yy, xx = np.mgrid[max(cy - outer, 0) : cy + outer + 1, max(cx - outer, 0) : cx + outer + 1]
        r = np.hypot(xx - x, yy - y)[: cut.shape[0], : cut.shape[1]]
        means = [np.nanmean(cut[(r >= k) & (r < k + 1)]) for k in range(int(np.floor(1.5 * fwhm)), int(np.ceil(4 * fwhm)))
                 if np.any((r >= k) & (r < k + 1))]
        if means:
            depths.append(min(means) / std)
    return float(np.median(depths)) if depths else None
