"""The sources of a restoration, with how far to trust each: positions, aperture fluxes and ``p_detect``.

A restoration can invent a source. Each posterior draw is a restoration
the data allow equally well, so a source that the draws agree on is one
the data support: ``p_detect`` is the fraction of draws in which the same
detector finds a source within :data:`MATCH_RADIUS` px of it.

Detector: ``DAOStarFinder(fwhm = output PSF FWHM, threshold = 10 x the
input's background std)`` on ``image - background median`` (the input's
sigma-clipped statistics, scaled to the output's pixels). Aperture flux:
a circle of radius ``3 x FWHM`` on ``image - median``; its uncertainty is
the std of that sum over the draws. The draws are the ones that make the
``UNCERT`` map (:func:`astrosr.restore.restore_image`); each is seen once
(:class:`DrawCatalog` is the observer ``restore_image`` calls) and none is
kept.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["MATCH_RADIUS", "THRESHOLD", "DrawCatalog", "detect", "write_catalog"]

#: A draw's detection within this many px of a source counts as that source
MATCH_RADIUS = 1.5
#: Detection threshold in units of the input's background std
THRESHOLD = 10.0
#: Aperture radius in units of the output PSF FWHM
APERTURE_FWHM = 3.0


def detect(image: np.ndarray, *, fwhm: float, threshold: float, median: float) -> np.ndarray:
    """``(n, 2)`` ``(x, y)`` of DAOStarFinder's sources in ``image - median`` (0-based pixels).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((40, 40))
    >>> yy, xx = np.mgrid[:40, :40]
    >>> image += 100 * np.exp(-((xx - 20.3) ** 2 + (yy - 11.0) ** 2) / (2 * 1.2**2))
    >>> detect(image, fwhm=2.8, threshold=5.0, median=0.0).round(1).tolist()
    [[20.3, 11.0]]
    """
    from photutils.detection import DAOStarFinder
    from photutils.utils.exceptions import NoDetectionsWarning

    data = np.nan_to_num(np.asarray(image, dtype=np.float64) - median, nan=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)  # an empty table says it
        table = DAOStarFinder(fwhm=fwhm, threshold=threshold).find_stars(data)
    if table is None or len(table) == 0:
        return np.zeros((0, 2))
    return np.column_stack([np.asarray(table["x_centroid"], float), np.asarray(table["y_centroid"], float)])


class DrawCatalog:
    """Builds a restoration's source table from the restoration and its posterior draws, one draw at a time.

    Parameters
    ----------
    fwhm : float
        The output PSF's FWHM (output px): the detector's and the aperture's scale.
    background_std, median : float
        The input's sigma-clipped background std and median, in the output's units.
    finder : callable, optional
        ``finder(image) -> (n, 2) (x, y)``, replacing the detector (evaluate
        uses bench-v1's own source finder, so ``p_detect`` qualifies exactly
        the sources its spurious count counts).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:48, :48]
    >>> star = 200 * np.exp(-((xx - 24.0) ** 2 + (yy - 20.0) ** 2) / (2 * 1.0**2))
    >>> rng = np.random.default_rng(0)
    >>> cat = DrawCatalog(fwhm=2.4, background_std=1.0, median=0.0)
    >>> cat.restored(star)
    >>> for _ in range(4):
    ...     cat.draw(star + rng.normal(0.0, 1.0, star.shape))
    >>> table = cat.table()
    >>> len(table), float(table["p_detect"][0])
    (1, 1.0)
    """

    def __init__(self, *, fwhm: float, background_std: float, median: float, finder=None) -> None:
        self.fwhm, self.median = float(fwhm), float(median)
        self.finder = finder
        self.threshold = THRESHOLD * float(background_std)
        self.radius = APERTURE_FWHM * self.fwhm
        self.xy = None
        self.flux = None
        self.hits = None
        self.n_draws = 0
        self._sum = self._sum2 = None

    def _photometry(self, image):
        from photutils.aperture import CircularAperture, aperture_photometry

        if len(self.xy) == 0:
            return np.zeros(0)
        data = np.nan_to_num(np.asarray(image, dtype=np.float64) - self.median, nan=0.0)
        table = aperture_photometry(data, CircularAperture(self.xy, r=self.radius))
        return np.asarray(table["aperture_sum"], dtype=np.float64)

    def _find(self, image):
        if self.finder is not None:
            return np.asarray(self.finder(image), dtype=np.float64).reshape(-1, 2)
        return detect(image, fwhm=self.fwhm, threshold=self.threshold, median=self.median)

    @property
    def p_detect(self) -> np.ndarray:
        """Per source: the fraction of draws that found it again (NaN before any draw)."""
        return self.hits / self.n_draws if self.n_draws else np.full(len(self.xy), np.nan)

    def restored(self, image: np.ndarray) -> None:
        """The restoration itself: its sources are the table's rows."""
        self.xy = self._find(image)
        self.flux = self._photometry(image)
        self.hits = np.zeros(len(self.xy), dtype=int)
        self._sum, self._sum2 = np.zeros(len(self.xy)), np.zeros(len(self.xy))

    def draw(self, image: np.ndarray) -> None:
        """One posterior draw: which sources it finds again, and its aperture sums at them."""
        if self.xy is None:
            raise RuntimeError("DrawCatalog: restored() comes before the draws")
        self.n_draws += 1
        if len(self.xy) == 0:
            return
        found = self._find(image)
        if len(found):
            from scipy.spatial import cKDTree

            distance, _ = cKDTree(found).query(self.xy, k=1)
            self.hits += distance <= MATCH_RADIUS
        flux = self._photometry(image)
        self._sum += flux
        self._sum2 += flux**2

    def table(self, wcs=None, *, bunit: str | None = None):
        """An astropy Table: ``x``, ``y`` (0-based px), ``ra``, ``dec`` (deg, with a celestial WCS),
        ``flux``, ``flux_err`` (std over draws), ``p_detect``; positions carry their units, metadata
        names the settings and what ``flux`` sums (``bunit``: the image's ``BUNIT``)."""
        import astropy.units as u
        from astropy.table import Table

        n = max(self.n_draws, 1)
        mean = self._sum / n
        var = np.maximum(self._sum2 / n - mean**2, 0.0) * (n / (n - 1) if self.n_draws > 1 else 0.0)
        xy = self.xy if len(self.xy) else np.zeros((0, 2))
        table = Table()
        table["x"] = xy[:, 0] * u.pix
        table["y"] = xy[:, 1] * u.pix
        celestial = wcs is not None and wcs.has_celestial
        if celestial:
            sky = wcs.celestial.pixel_to_world(xy[:, 0], xy[:, 1])
            table["ra"] = sky.icrs.ra.deg * u.deg
            table["dec"] = sky.icrs.dec.deg * u.deg
        # no unit on the sums: a BUNIT per area (MJy/sr) or per beam summed over pixels is not that unit
        table["flux"] = self.flux
        table["flux_err"] = np.sqrt(var) if self.n_draws > 1 else np.full(len(self.xy), np.nan)
        table["p_detect"] = self.p_detect
        table.meta.update({
            "detector": f"photutils DAOStarFinder(fwhm={self.fwhm:.4g}, threshold={THRESHOLD:g} x input background "
                        f"std = {self.threshold:.6g}) on image - {self.median:.6g}",
            "aperture_radius_px": self.radius,
            "match_radius_px": MATCH_RADIUS,
            "draws": self.n_draws,
            "coordinates": "x, y: 0-based pixel centres of the output image"
                           + ("; ra, dec: ICRS degrees from its WCS" if celestial
                              else " (no celestial WCS: no ra, dec)"),
            "flux": "sum of the output's pixel values within the aperture"
                    + (f" (pixel values in BUNIT {bunit!r})" if bunit else ""),
        })
        return table


def write_catalog(path, table, *, overwrite: bool = True) -> None:
    """Write ``table`` as ECSV at ``path``, atomically."""
    from .files import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
