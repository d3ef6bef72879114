"""Is the uncertainty honest? Coverage of the truth by sigma, sigma's ranking of errors, and its calibration.

The test of a per-pixel uncertainty ``sigma`` of a restoration SR against
the original ORI, which is itself noisy (background std ``s``, sigma-clipped)::

    z = |SR - ORI| / sqrt(sigma^2 + s^2)

A calibrated sigma puts 68% of pixels at ``z <= 1`` and 95% at ``z <= 2``.
The pixels that matter are ORI's *source pixels* (``ORI - median > 5 s``),
where the restoration has work to do; every pixel of the scored tiles is
reported too. A useful sigma also *ranks* errors: among source pixels of
similar brightness (quintiles of ORI), those with the largest sigma should
have the largest errors.

sigma itself is the std over posterior draws of the whole restoration path
(:func:`astrosr.restore.restore_image` with ``samples``) times one scalar,
``uncertainty_scale``, fitted on the val images (:func:`fit_scale`) and
stored with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SOURCE_SIGMA", "LEVELS", "PixelErrors", "pixel_errors", "pooled", "coverage", "sigma_ranking",
           "fit_scale", "summary", "calibrate"]

#: Source pixels: ORI more than this many background std above its median
SOURCE_SIGMA = 5.0
#: The z levels of the reliability diagram (coverage expected for Gaussian errors: erf(k / sqrt 2))
LEVELS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
#: The windows a calibrated sigma keeps on source pixels (z <= 1, z <= 2)
WINDOWS = {1.0: (0.60, 0.76), 2.0: (0.90, 0.98)}


@dataclass
class PixelErrors:
    """Per-pixel errors of one restoration, in units of ORI's scoring span (hi - lo), pooled over images.

    Attributes
    ----------
    err : ndarray
        ``|SR - ORI|``.
    sigma : ndarray
        The restoration's uncertainty.
    noise : ndarray
        ORI's background std ``s`` at each pixel (one value per image).
    brightness : ndarray
        ``ORI - median``.
    source : ndarray of bool
        ``brightness > SOURCE_SIGMA * noise``.
    """

    err: np.ndarray
    sigma: np.ndarray
    noise: np.ndarray
    brightness: np.ndarray
    source: np.ndarray

    def z(self, scale: float = 1.0) -> np.ndarray:
        """``|SR - ORI| / sqrt((scale sigma)^2 + s^2)``."""
        return self.err / np.sqrt((scale * self.sigma) ** 2 + self.noise**2)

    def sources(self) -> PixelErrors:
        """The source pixels only."""
        m = self.source
        return PixelErrors(self.err[m], self.sigma[m], self.noise[m], self.brightness[m], self.source[m])


def pixel_errors(ref, image: np.ndarray, sigma: np.ndarray) -> PixelErrors:
    """The :class:`PixelErrors` of ``image`` with uncertainty ``sigma`` on ORI's scored tiles.

    Parameters
    ----------
    ref : astrosr.metrics.Reference
        ORI's reference (its scored tiles, span and background statistics).
    image, sigma : ndarray
        A restoration and its per-pixel uncertainty, in ORI's physical units.
        Pixels where either is not finite are left out.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.metrics import reference
    >>> ori = np.random.default_rng(0).normal(100.0, 5.0, (128, 128))
    >>> errors = pixel_errors(reference(ori), ori + 1.0, np.full(ori.shape, 2.0))
    >>> errors.err.size, int(errors.source.sum())
    (16384, 0)
    """
    from .tiling import extract_tiles

    if not ref.origins:
        empty = np.zeros(0, dtype=np.float32)
        return PixelErrors(empty, empty, empty, empty, np.zeros(0, dtype=bool))
    span = ref.hi - ref.lo
    ori = extract_tiles(ref.ori, ref.origins, ref.tile).ravel()
    sr = extract_tiles(np.asarray(image, dtype=np.float64), ref.origins, ref.tile).ravel()
    sig = extract_tiles(np.asarray(sigma, dtype=np.float64), ref.origins, ref.tile).ravel()
    keep = np.isfinite(ori) & np.isfinite(sr) & np.isfinite(sig)
    brightness = (ori[keep] - ref.median) / span
    noise = np.full(brightness.shape, ref.std / span)
    return PixelErrors(
        err=(np.abs(sr[keep] - ori[keep]) / span).astype(np.float32),
        sigma=(sig[keep] / span).astype(np.float32),
        noise=noise.astype(np.float32),
        brightness=brightness.astype(np.float32),
        source=brightness > SOURCE_SIGMA * noise,
    )


def pooled(parts: list[PixelErrors]) -> PixelErrors:
    """One :class:`PixelErrors` of several images' pixels (a field)."""
    return PixelErrors(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                         ("err", "sigma", "noise", "brightness", "source")))


def coverage(errors: PixelErrors, levels=LEVELS) -> dict[float, float | None]:
    """Fraction of pixels with ``z <= k`` for each level ``k`` (None without pixels).

    Examples
    --------
    >>> import numpy as np
    >>> e = np.abs(np.random.default_rng(1).normal(0.0, 1.0, 200_000)).astype(np.float32)
    >>> ones = np.ones_like(e)
    >>> errors = PixelErrors(e, ones, 0 * ones, ones, ones > 0)
    >>> round(coverage(errors, [1.0])[1.0], 2), round(coverage(errors, [2.0])[2.0], 2)
    (0.68, 0.95)
    """
    if errors.err.size == 0:
        return {k: None for k in levels}
    z = errors.z()
    return {k: float(np.mean(z <= k)) for k in levels}


def sigma_ranking(errors: PixelErrors, *, quintiles: int = 5) -> list[float | None]:
    """Per ORI-brightness quintile of the source pixels: mean error of the top tenth of sigma / of its lower half.

    A sigma that ranks errors gives ratios well above 1 (the floor is 1.5); a
    quintile with too few pixels to split (under 20) gives None.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> sigma = rng.uniform(0.1, 1.0, 50_000).astype(np.float32)
    >>> err = np.abs(rng.normal(0.0, sigma)).astype(np.float32)
    >>> errors = PixelErrors(err, sigma, 0 * sigma, rng.uniform(1, 2, sigma.size).astype(np.float32), sigma > 0)
    >>> [round(r, 1) for r in sigma_ranking(errors)]
    [2.9, 2.9, 2.9, 2.9, 3.0]
    """
    src = errors.sources()
    if src.err.size == 0:
        return [None] * quintiles
    edges = np.quantile(src.brightness, np.linspace(0, 1, quintiles + 1))
    which = np.clip(np.searchsorted(edges, src.brightness, side="right") - 1, 0, quintiles - 1)
    ratios = []
    for q in range(quintiles):
        e, s = src.err[which == q], src.sigma[which == q]
        if e.size < 20:
            ratios.append(None)
            continue
        order = np.argsort(s, kind="stable")
        low, top = e[order[: e.size // 2]], e[order[-max(e.size // 10, 1):]]
        ratios.append(float(top.mean() / low.mean()) if low.mean() > 0 else None)
    return ratios


def fit_scale(errors: PixelErrors) -> float:
    """The multiplier of sigma that puts the source pixels' coverage in the middle of both windows.

    Windows: ``z <= 1`` in 0.60-0.76 and ``z <= 2`` in 0.90-0.98 (their
    centres 0.68 and 0.94); the scale minimises the larger of the two
    distances from the centres, each in units of its half-width. Computed
    exactly: pixel i has ``z <= k`` once ``scale >= sqrt((err/k)^2 - s^2) / sigma``.

    Examples
    --------
    Gaussian errors of std 3 x sigma, no ORI noise: 3 puts 68% at z <= 1 and
    2.82 puts 94% at z <= 2; the scale splits the difference.

    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> sigma = rng.uniform(0.5, 2.0, 100_000).astype(np.float32)
    >>> err = np.abs(rng.normal(0.0, 3.0 * sigma)).astype(np.float32)
    >>> errors = PixelErrors(err, sigma, 0 * sigma, sigma, sigma > 0)
    >>> round(fit_scale(errors), 1)
    2.9
    """
    src = errors.sources()
    if src.err.size == 0:
        return 1.0
    thresholds = {}
    for k in WINDOWS:
        need = np.sqrt(np.maximum((src.err.astype(np.float64) / k) ** 2 - src.noise.astype(np.float64) ** 2, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            thresholds[k] = np.sort(np.where(src.sigma > 0, need / src.sigma, np.where(need > 0, np.inf, 0.0)))
    grid = np.geomspace(1e-3, 1e4, 4001)
    cost = np.zeros_like(grid)
    for k, (lo, hi) in WINDOWS.items():
        frac = np.searchsorted(thresholds[k], grid, side="right") / thresholds[k].size
        cost = np.maximum(cost, np.abs(frac - 0.5 * (lo + hi)) / (0.5 * (hi - lo)))
    return float(grid[int(np.argmin(cost))])


def summary(errors: PixelErrors) -> dict:
    """The figures evaluate reports for one image or field: coverage of source and all pixels, ranking.

    Keys: ``source_pixels``, ``pixels``, ``within_1``/``within_2`` (source
    pixels), ``within_1_all``/``within_2_all``, ``coverage`` (source pixels,
    per level of :data:`LEVELS`), ``coverage_all``, ``ranking`` (per
    quintile) and ``ranking_min``.
    """
    src = errors.sources()
    cov_src, cov_all = coverage(src), coverage(errors)
    ranking = sigma_ranking(errors)
    known = [r for r in ranking if r is not None]
    return {
        "source_pixels": int(src.err.size),
        "pixels": int(errors.err.size),
        "within_1": cov_src[1.0], "within_2": cov_src[2.0],
        "within_1_all": cov_all[1.0], "within_2_all": cov_all[2.0],
        "coverage": {str(k): v for k, v in cov_src.items()},
        "coverage_all": {str(k): v for k, v in cov_all.items()},
        "expected": {str(k): math.erf(k / math.sqrt(2.0)) for k in LEVELS},
        "ranking": ranking,
        "ranking_min": min(known) if known else None,
    }


def calibrate(model, images, *, samples: int = 16, seed: int = 0, device="cpu", tile: int = 512) -> dict:
    """Fit ``model``'s ``uncertainty_scale`` on whole val images; the record stored with the model.

    Each image (a :class:`astrosr.validation.ValImage`) is restored with
    ``samples`` draws through the consistency step, seeded; the scale is
    :func:`fit_scale` of the pooled source pixels of the uncalibrated sigma.

    Returns
    -------
    dict
        ``{'scale', 'samples', 'seed', 'images', 'source_pixels', 'within_1', 'within_2'}``
        (coverage on these val images at the fitted scale).
    """
    import torch

    from .restore import restore_image

    parts = []
    previous = getattr(model, "uncertainty_scale", 1.0)
    model.uncertainty_scale = 1.0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for image in images:
                restored = restore_image(image.blu, model, psf_kernel=image.kernel, psf_fwhm=image.fwhm,
                                         samples=samples, device=device, tile=tile)
                parts.append(pixel_errors(image.ref, restored.sr, restored.uncert))
    finally:
        model.uncertainty_scale = previous
    errors = pooled(parts)
    scale = fit_scale(errors)
    errors.sigma = errors.sigma * scale
    cov = coverage(errors.sources(), [1.0, 2.0])
    return {"scale": scale, "samples": samples, "seed": seed, "images": [im.name for im in images],
            "source_pixels": int(errors.source.sum()), "within_1": cov[1.0], "within_2": cov[2.0]}
