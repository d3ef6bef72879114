"""PSFs and the bench-v1 degradation: ORI -> BLU = PSF * ORI + noise.

bench-v1 (``../shared/BENCHMARK.md`` section 2) fixes a Moffat PSF of FWHM 4 px
and beta 3 on a 41x41 grid, edge-extended linear convolution with NaN pixels
counted as 0, and Gaussian noise at the sigma-clipped background std of ORI
drawn with ``numpy.random.default_rng(0)`` over the full image in C order.
Every parameter here defaults to that.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage, signal, special

from .errors import ConfigError, InputError

__all__ = [
    "PSF",
    "moffat_psf",
    "gaussian_psf",
    "airy_psf",
    "read_psf",
    "convolve_extend",
    "background_stats",
    "percentile_limits",
    "degrade",
    "block_average",
    "measure_fwhm",
    "BENCH_V1_PSF",
]

PSF_SHAPES = ("moffat", "gaussian", "airy", "file")


def _grid(size):
    if size < 3 or size % 2 == 0:
        raise ConfigError(f"psf size must be an odd integer >= 3, got {size}")
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    return np.hypot(x, y)


def moffat_psf(fwhm=4.0, *, beta=3.0, size=41):
    """Circular Moffat kernel sampled at pixel centres, unit sum.

    ``gamma = fwhm / (2 sqrt(2**(1/beta) - 1))``; astropy calls ``beta`` alpha.
    """
    if not fwhm > 0:
        raise ConfigError(f"psf fwhm must be > 0, got {fwhm}")
    if not beta > 1:
        raise ConfigError(f"psf beta must be > 1, got {beta}")
    gamma = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    kernel = (1.0 + (_grid(size) / gamma) ** 2) ** (-beta)
    return kernel / kernel.sum()


def gaussian_psf(fwhm=4.0, *, size=None):
    """Circular Gaussian kernel sampled at pixel centres, unit sum (default size covers +-5 sigma)."""
    if not fwhm > 0:
        raise ConfigError(f"psf fwhm must be > 0, got {fwhm}")
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    size = size or 2 * int(np.ceil(5 * sigma)) + 1
    kernel = np.exp(-0.5 * (_grid(size) / sigma) ** 2)
    return kernel / kernel.sum()


def airy_psf(radius, *, size=41):
    """Airy disc whose first dark ring lies at ``radius`` pixels, unit sum."""
    if not radius > 0:
        raise ConfigError(f"psf airy radius must be > 0, got {radius}")
    x = special.jn_zeros(1, 1)[0] * _grid(size) / radius
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(x == 0, 1.0, (2.0 * special.j1(x) / x) ** 2)
    return kernel / kernel.sum()


def read_psf(path, *, pixscale=None, image_pixscale=None):
    """A measured PSF from a FITS image, optionally resampled, unit sum, odd size.

    Parameters
    ----------
    path : str or Path
    pixscale : float, optional
        The PSF file's pixel scale (arcsec/px).
    image_pixscale : float, optional
        The image's pixel scale; with ``pixscale`` the PSF is resampled to it.
    """
    from .fits_io import read_image

    kernel = np.nan_to_num(read_image(path, min_size=3).data)
    if pixscale is not None and image_pixscale is not None:
        kernel = ndimage.zoom(kernel, pixscale / image_pixscale, order=3)
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        kernel = np.pad(kernel, ((0, 1 - kernel.shape[0] % 2), (0, 1 - kernel.shape[1] % 2)))
    kernel = np.clip(kernel, 0, None)
    if kernel.sum() <= 0:
        raise InputError(f"{path}: PSF has no positive pixels")
    return kernel / kernel.sum()


@dataclass(frozen=True)
class PSF:
    """A PSF description that builds its kernel and records itself.

    Parameters
    ----------
    shape : {'moffat', 'gaussian', 'airy', 'file'}
    fwhm : float
        FWHM in pixels (moffat, gaussian).
    beta : float
        Moffat power index (astropy ``alpha``).
    radius : float or None
        Airy first-zero radius in pixels.
    path : str or None
        FITS kernel (shape 'file').
    pixscale, image_pixscale : float or None
        Pixel scales for resampling a file PSF.
    size : int
        Kernel side for analytic shapes.
    """

    shape: str = "moffat"
    fwhm: float = 4.0
    beta: float = 3.0
    radius: float | None = None
    path: str | None = None
    pixscale: float | None = None
    image_pixscale: float | None = None
    size: int = 41

    def __post_init__(self):
        if self.shape not in PSF_SHAPES:
            raise ConfigError(f"psf shape must be one of {', '.join(PSF_SHAPES)}, got {self.shape!r}")
        if self.shape == "file" and not self.path:
            raise ConfigError("psf shape 'file' needs a path (--psf FILE)")
        if self.shape == "airy" and self.radius is None:
            raise ConfigError("psf shape 'airy' needs a radius (--psf-radius R)")

    def kernel(self):
        """The kernel as a float64 array of unit sum."""
        if self.shape == "moffat":
            return moffat_psf(self.fwhm, beta=self.beta, size=self.size)
        if self.shape == "gaussian":
            return gaussian_psf(self.fwhm, size=self.size)
        if self.shape == "airy":
            return airy_psf(self.radius, size=self.size)
        return read_psf(self.path, pixscale=self.pixscale, image_pixscale=self.image_pixscale)

    def fwhm_px(self, kernel=None):
        """FWHM in pixels: the analytic one, else measured on the kernel (file and Airy PSFs)."""
        if self.shape in ("moffat", "gaussian"):
            return float(self.fwhm)
        return measure_fwhm(self.kernel() if kernel is None else kernel)

    def to_dict(self):
        return asdict(self)

    def describe(self):
        """One line for reports and FITS HISTORY."""
        if self.shape == "moffat":
            return f"Moffat FWHM={self.fwhm:g}px beta={self.beta:g} {self.size}x{self.size}"
        if self.shape == "gaussian":
            return f"Gaussian FWHM={self.fwhm:g}px"
        if self.shape == "airy":
            return f"Airy first-zero radius={self.radius:g}px"
        return f"PSF file {self.path}"


BENCH_V1_PSF = PSF()


def measure_fwhm(kernel, *, oversample=8):
    """FWHM in pixels of a centred, roughly circular kernel (for file and Airy PSFs).

    The kernel is interpolated ``oversample`` times finer (cubic) and the area
    above half its peak is taken as a disc: ``fwhm = 2 sqrt(area / pi)``.
    """
    fine = ndimage.zoom(np.asarray(kernel, dtype=np.float64), oversample, order=3, grid_mode=True, mode="grid-constant")
    area = np.count_nonzero(fine >= 0.5 * fine.max()) / oversample**2
    return float(2.0 * np.sqrt(area / np.pi))


def convolve_extend(image, kernel):
    """Linear convolution with edges extended and NaN counted as 0 (bench-v1).

    Equal to ``scipy.ndimage.convolve(nan_to_num(image), kernel, mode='nearest')``
    for an odd kernel, computed by FFT of the edge-padded image (faster for
    41x41 kernels).
    """
    ky, kx = kernel.shape
    if ky % 2 == 0 or kx % 2 == 0:
        raise ConfigError(f"psf kernel must have odd sides, got {kernel.shape}")
    padded = np.pad(np.nan_to_num(image, nan=0.0), ((ky // 2, ky // 2), (kx // 2, kx // 2)), mode="edge")
    return signal.fftconvolve(padded, kernel, mode="valid")


def background_stats(image, *, sigma=3.0, maxiters=5):
    """``(mean, median, std)`` of the finite pixels, sigma-clipped (sigma 3, 5 iterations).

    astropy's ``sigma_clipped_stats`` (median centre, std, bounds inclusive,
    stop when nothing changes) on the pixels sorted once: every clipped set
    is then a slice, its median an index and each bound a binary search,
    4x faster than astropy's masked passes (restore runs it per image) with
    the same values to the last bit or two.
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


def percentile_limits(image, lo=0.5, hi=99.9):
    """``(lo, hi)`` percentiles of the finite pixels: bench-v1's normalisation limits."""
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, [lo, hi])
    return float(low), float(high)


def block_average(image, scale):
    """Average ``scale x scale`` blocks (the image is cropped to a multiple of ``scale``)."""
    if scale == 1:
        return image
    h, w = (image.shape[0] // scale) * scale, (image.shape[1] // scale) * scale
    return image[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))


def degrade(ori, kernel, *, noise_std, rng, poisson_gain=None, scale=1):
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
        the background, drawn after the Gaussian noise.
    scale : int, optional
        Block-average BLU by this integer (true super-resolution pairs).
    """
    if int(scale) != scale or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale}")
    blu = convolve_extend(ori, kernel)
    blu = blu + rng.normal(0.0, noise_std, blu.shape)
    if poisson_gain:
        signal_adu = np.clip(blu - np.median(blu), 0, None)
        blu = blu + rng.normal(0.0, 1.0, blu.shape) * np.sqrt(signal_adu / poisson_gain)
    return block_average(blu, int(scale))
