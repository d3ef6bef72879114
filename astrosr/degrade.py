"""The one degradation: ORI -> BLU = PSF * ORI + noise (then block averaging for x S pairs).

bench-v1 fixes edge-extended linear convolution with NaN pixels counted as 0,
and Gaussian noise at the sigma-clipped background std of ORI drawn with
``numpy.random.default_rng(0)`` over the full image in C order
(:func:`bench_v1_degrade`). prepare's training images use the same
:func:`degrade` with their own random stream, randomised PSFs and noise, and
optionally a Poisson term. The PSF itself is :mod:`astrosr.psf`. The rules
are ``benchmarks/README.md``, sections Loading and Degradation.

Examples
--------
>>> import numpy as np
>>> from astrosr.degrade import bench_v1_degrade
>>> from astrosr.psf import BENCH_V1_PSF
>>> ori = np.random.default_rng(1).normal(100.0, 5.0, (64, 64))
>>> blu, noise_std = bench_v1_degrade(ori, BENCH_V1_PSF.kernel())
>>> blu.shape
(64, 64)
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

__all__ = [
    "convolve_extend",
    "background_stats",
    "percentile_limits",
    "degrade",
    "bench_v1_degrade",
    "block_average",
]


def convolve_extend(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution with edges extended and NaN counted as 0 (bench-v1).

    Equal to ``scipy.ndimage.convolve(nan_to_num(image), kernel, mode='nearest')``
    for an odd kernel, computed by FFT of the edge-padded image (faster for
    41x41 kernels).

    Raises
    ------
    ConfigError
        A side of ``kernel`` is even (it would have no centre pixel).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> from astrosr.psf import moffat_psf
    >>> image = np.random.default_rng(0).normal(size=(32, 32))
    >>> image[3, 3] = np.nan
    >>> kernel = moffat_psf(4.0, size=9)
    >>> expected = ndimage.convolve(np.nan_to_num(image), kernel, mode="nearest")
    >>> bool(np.allclose(convolve_extend(image, kernel), expected))
    True
    """
    ky, kx = kernel.shape
    if ky % 2 == 0 or kx % 2 == 0:
        raise ConfigError(f"psf kernel must have odd sides, got {kernel.shape}")
    from scipy import signal  # on use: importing the package (the CLI's -h) stays fast

    padded = np.pad(np.nan_to_num(image, nan=0.0), ((ky // 2, ky // 2), (kx // 2, kx // 2)), mode="edge")
    return signal.fftconvolve(padded, kernel, mode="valid")


def background_stats(image: np.ndarray, *, sigma: float = 3.0, maxiters: int = 5) -> tuple[float, float, float]:
    """``(mean, median, std)`` of the finite pixels, sigma-clipped (sigma 3, 5 iterations).

    astropy's ``sigma_clipped_stats`` (median centre, std, bounds inclusive,
    stop when nothing changes) on the pixels sorted once: every clipped set
    is then a slice, its median an index and each bound a binary search,
    4x faster than astropy's masked passes (restore runs it per image) with
    the same values to the last bit or two.

    Examples
    --------
    >>> import numpy as np
    >>> pixels = np.random.default_rng(0).normal(10.0, 2.0, 10000)
    >>> pixels[:10] = 1e6  # a few saturated pixels are clipped away
    >>> [round(v, 2) for v in background_stats(pixels)]
    [10.02, 9.98, 1.97]
    """
    data = np.sort(image[np.isfinite(image)], axis=None)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    start, stop = 0, data.size
    for _ in range(maxiters):
        kept = data[start:stop]
        n = kept.size
        median, std = 0.5 * (kept[(n - 1) // 2] + kept[n // 2]), kept.std()
        low = start + int(np.searchsorted(kept, median - sigma * std, side="left"))
        high = start + int(np.searchsorted(kept, median + sigma * std, side="right"))
        if (low, high) == (start, stop):
            break
        start, stop = low, high
    kept = data[start:stop]
    if kept.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(kept.mean()), float(np.median(kept)), float(kept.std())


def percentile_limits(image: np.ndarray, lo: float = 0.5, hi: float = 99.9) -> tuple[float, float]:
    """``(lo, hi)`` percentiles of the finite pixels: bench-v1's normalisation limits.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.arange(1001.0)
    >>> image[0] = np.nan
    >>> [round(v, 6) for v in percentile_limits(image)]
    [5.995, 999.001]
    """
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, [lo, hi])
    return float(low), float(high)


def block_average(image: np.ndarray, scale: int) -> np.ndarray:
    """Average ``scale x scale`` blocks (the image is cropped to a multiple of ``scale``).

    Examples
    --------
    >>> import numpy as np
    >>> block_average(np.arange(16.0).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    >>> block_average(np.ones((5, 7)), 2).shape  # the odd last row and column are dropped
    (2, 3)
    """
    if scale == 1:
        return image
    h, w = (image.shape[0] // scale) * scale, (image.shape[1] // scale) * scale
    return image[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))


def degrade(
    ori: np.ndarray,
    kernel: np.ndarray,
    *,
    noise_std: float,
    rng: np.random.Generator,
    poisson_gain: float | None = None,
    background: float = 0.0,
    scale: int = 1,
    margin: bool = False,
) -> np.ndarray:
    """BLU from ORI: convolve, add Gaussian (and optionally Poisson) noise, block-average.

    Parameters
    ----------
    ori : ndarray
        Original image in linear flux units (NaN pixels act as 0).
    kernel : ndarray
        Unit-sum PSF with odd sides.
    noise_std : float
        Std of the Gaussian noise, drawn over the full image in C order.
    rng : numpy.random.Generator
        Seeded generator (bench-v1: ``default_rng(0)`` per image).
    poisson_gain : float, optional
        Gain in e-/ADU: adds shot noise of the (positive) blurred signal above
        ``background``, drawn after the Gaussian noise.
    background : float
        The sky level of ORI (its sigma-clipped median): the Poisson term
        counts only the signal above it, the same for a whole image and for
        one tile of it (a tile on a galaxy has no sky of its own).
    scale : int, optional
        Block-average BLU by this integer (true super-resolution pairs).
    margin : bool
        ``ori`` already carries the kernel's half-width of (edge-extended)
        context on each side, which the convolution consumes: one tile of a
        large image is degraded without padding the whole image again.

    Returns
    -------
    ndarray
        BLU, float64; ``scale`` times smaller on each side (and, with
        ``margin``, less the margins).

    Raises
    ------
    ConfigError
        ``scale`` is not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import moffat_psf
    >>> ori = np.zeros((32, 32))
    >>> blu = degrade(ori, moffat_psf(4.0, size=9), noise_std=1.0, rng=np.random.default_rng(0), scale=2)
    >>> blu.shape
    (16, 16)
    """
    if int(scale) != scale or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale}")
    from scipy import signal

    blu = signal.fftconvolve(ori, kernel, mode="valid") if margin else convolve_extend(ori, kernel)
    blu = blu + rng.normal(0.0, noise_std, blu.shape)
    if poisson_gain:
        blu = blu + rng.normal(0.0, 1.0, blu.shape) * np.sqrt(np.clip(blu - background, 0, None) / poisson_gain)
    return block_average(blu, int(scale))


def bench_v1_degrade(
    ori: np.ndarray, kernel: np.ndarray, *, noise: float = 1.0, noise_std: float | None = None, scale: int = 1
) -> tuple[np.ndarray, float]:
    """bench-v1's BLU of a whole image: ``(blu, noise_std)``.

    The noise std is ``noise`` times ORI's sigma-clipped background std unless
    ``noise_std`` is given, drawn from a fresh ``default_rng(0)``: every image
    of a test field gets exactly this, in prepare, evaluate, training
    validation and the pipeline.

    Examples
    --------
    The same image always gets the same noise:

    >>> import numpy as np
    >>> from astrosr.psf import moffat_psf
    >>> ori = np.random.default_rng(1).normal(100.0, 5.0, (64, 64))
    >>> first, std = bench_v1_degrade(ori, moffat_psf(4.0, size=9))
    >>> again, _ = bench_v1_degrade(ori, moffat_psf(4.0, size=9))
    >>> bool(np.array_equal(first, again)), round(std, 3)
    (True, 4.925)
    """
    if noise_std is None:
        noise_std = noise * background_stats(ori)[2]
    return degrade(ori, kernel, noise_std=noise_std, rng=np.random.default_rng(0), scale=scale), noise_std
