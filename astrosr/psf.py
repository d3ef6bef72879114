"""The PSF: one specification, its kernels, and measurements on a kernel.

Kept together as one module: every PSF astrosr handles is stated, built and
measured here.

:class:`PSF` is the one way a PSF is stated anywhere in astrosr: the library
argument, the ``psf:`` section of a pipeline YAML and the ``--psf*`` flags of
the CLI all build one. A PSF is analytic (Moffat, Gaussian, Airy) or a FITS
kernel; for training data (``prepare``) its FWHM, beta and radius may be
ranges ``'lo:hi'`` and its shape a comma list, from which each image or tile
draws a concrete PSF (:meth:`PSF.draw`).

bench-v1's PSF is a Moffat of FWHM 4 px and beta 3 on a 41 x 41 grid
(:data:`BENCH_V1_PSF`, the default of every field).

Examples
--------
>>> from astrosr.psf import PSF
>>> psf = PSF(shape="gaussian", fwhm=3.0)
>>> kernel = psf.kernel()
>>> kernel.shape, round(float(kernel.sum()), 6)
((41, 41), 1.0)
>>> PSF(fwhm="2.5:5.5").ranged
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputError

__all__ = [
    "PSF",
    "BENCH_V1_PSF",
    "moffat_kernel",
    "kernel_side",
    "pixel_moffat",
    "matching_kernel",
    "fwhm_of_gamma",
    "gamma_of_fwhm",
    "PSF_SHAPES",
    "moffat_psf",
    "gaussian_psf",
    "airy_psf",
    "read_psf",
    "check_kernel",
    "measure_fwhm",
    "parse_range",
    "kernel_and_fwhm",
]

PSF_SHAPES = ("moffat", "gaussian", "airy", "file", "auto")
#: the keys each shape uses besides ``shape`` (an option a shape does not use is an error, not ignored)
SHAPE_KEYS = {"moffat": ("fwhm", "beta", "size"), "gaussian": ("fwhm", "size"), "airy": ("radius", "size"),
              "file": ("path", "pixscale", "image_pixscale"), "auto": ()}
#: bench-v1's values, taken by the test fields where a training PSF gives a range
BENCH_VALUES = {"fwhm": 4.0, "beta": 3.0}


def _grid(size: int) -> np.ndarray:
    if size < 3 or size % 2 == 0:
        raise ConfigError(f"psf size must be an odd integer >= 3, got {size}")
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    return np.hypot(x, y)


def moffat_psf(fwhm: float = 4.0, *, beta: float = 3.0, size: int = 41) -> np.ndarray:
    """Circular Moffat kernel sampled at pixel centres, unit sum.

    ``gamma = fwhm / (2 sqrt(2**(1/beta) - 1))``; astropy calls ``beta`` alpha.

    Examples
    --------
    >>> from astrosr.psf import moffat_psf
    >>> moffat_psf(4.0, beta=3.0).shape
    (41, 41)
    """
    if not fwhm > 0:
        raise ConfigError(f"psf fwhm must be > 0, got {fwhm}")
    if not beta > 1:
        raise ConfigError(f"psf beta must be > 1, got {beta}")
    kernel = (1.0 + (_grid(size) / gamma_of_fwhm(fwhm, beta)) ** 2) ** (-beta)
    return kernel / kernel.sum()


def gaussian_psf(fwhm: float = 4.0, *, size: int | None = None) -> np.ndarray:
    """Circular Gaussian kernel sampled at pixel centres, unit sum (default size covers +-5 sigma)."""
    if not fwhm > 0:
        raise ConfigError(f"psf fwhm must be > 0, got {fwhm}")
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    size = size or 2 * int(np.ceil(5 * sigma)) + 1
    kernel = np.exp(-0.5 * (_grid(size) / sigma) ** 2)
    return kernel / kernel.sum()


def airy_psf(radius: float, *, size: int = 41) -> np.ndarray:
    """Airy disc whose first dark ring lies at ``radius`` pixels, unit sum."""
    if not radius > 0:
        raise ConfigError(f"psf airy radius must be > 0, got {radius}")
    from scipy import special

    x = special.jn_zeros(1, 1)[0] * _grid(size) / radius
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(x == 0, 1.0, (2.0 * special.j1(x) / x) ** 2)
    return kernel / kernel.sum()


#: sub-pixels per axis over which a pixel-integrated Moffat is averaged
SUBPIXELS = 5


def pixel_moffat(x, y, amplitude, x_0, y_0, gamma, q, theta, beta, subpixels=SUBPIXELS):
    """Elliptical Moffat integrated over each pixel (``subpixels``^2 samples): ``gamma`` the geometric-mean core.

    The model :mod:`astrosr.psf_measure` fits to stars; ``theta`` in radians from +x, ``q`` the axis ratio b/a.
    """
    offsets = (np.arange(subpixels) + 0.5) / subpixels - 0.5
    q = np.clip(q, 1e-3, None)
    a, b = gamma / np.sqrt(q), gamma * np.sqrt(q)
    cos, sin = np.cos(theta), np.sin(theta)
    total = 0.0
    for dy in offsets:
        for dx in offsets:
            u, v = x + dx - x_0, y + dy - y_0
            major, minor = u * cos + v * sin, -u * sin + v * cos
            total = total + (1.0 + (major / a) ** 2 + (minor / b) ** 2) ** (-beta)
    return amplitude * total / subpixels**2


def fwhm_of_gamma(gamma: float, beta: float) -> float:
    """A Moffat's FWHM from its core width ``gamma`` and power index ``beta``."""
    return 2.0 * gamma * np.sqrt(2.0 ** (1.0 / beta) - 1.0)


def gamma_of_fwhm(fwhm: float, beta: float) -> float:
    """A Moffat's core width ``gamma`` from its FWHM and power index ``beta``."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def kernel_side(fwhm: float) -> int:
    """The odd side of a kernel drawn for a PSF of ``fwhm`` px: about 8 FWHM, 15 to 81 px.

    Examples
    --------
    >>> kernel_side(3.0), kernel_side(1.0), kernel_side(30.0)
    (25, 15, 81)
    """
    return int(min(81, max(15, 2 * math.ceil(4 * fwhm) + 1)))


def moffat_kernel(fwhm: float, beta: float, *, ellipticity: float = 0.0, angle: float = 0.0,
                  size: int | None = None) -> np.ndarray:
    """A pixel-integrated elliptical Moffat kernel (odd side, unit sum): what the fit measures.

    ``fwhm`` is the geometric mean of the two axes' FWHM; ``angle`` in
    degrees from +x. ``size`` defaults to :func:`kernel_side`.

    Examples
    --------
    >>> k = moffat_kernel(3.0, 3.0)
    >>> k.shape, round(float(k.sum()), 6)
    ((25, 25), 1.0)
    """
    size = size or kernel_side(fwhm)
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    kernel = pixel_moffat(x, y, 1.0, 0.0, 0.0, gamma_of_fwhm(fwhm, beta), 1.0 - ellipticity, math.radians(angle), beta)
    return kernel / kernel.sum()


def matching_kernel(image_psf: np.ndarray, output_psf: np.ndarray, *, regularisation: float = 1e-6) -> np.ndarray:
    """The kernel a restoration to ``output_psf`` removes: ``output_psf (*) kernel = image_psf``.

    A Tikhonov-regularised Fourier ratio, ``H_image conj(H_out) / (|H_out|^2
    + regularisation)`` (unit-sum kernels, so ``|H| <= 1``): where the output
    PSF still carries power the ratio is exact, and where it has none the
    kernel has none either. Both kernels are centred and odd-sided; the
    smaller is padded to the larger's side. Unit sum; it may hold small
    negative values when the two PSFs are nearly the same width (deblur's
    guard refuses an output PSF at or above the image's).

    Examples
    --------
    >>> from scipy.signal import fftconvolve
    >>> image, target = moffat_kernel(3.0, 3.0, size=41), moffat_kernel(2.0, 3.0, size=41)
    >>> kernel = matching_kernel(image, target)
    >>> float(np.abs(fftconvolve(target, kernel, mode="same") - image).max() / image.max()) < 1e-3
    True
    """
    image_psf, output_psf = (np.asarray(k, dtype=np.float64) for k in (image_psf, output_psf))
    side = max(image_psf.shape + output_psf.shape)
    padded = []
    for k in (image_psf, output_psf):
        if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ConfigError(f"matching_kernel: kernels must have odd sides, got shape {k.shape}")
        py, px = (side - k.shape[0]) // 2, (side - k.shape[1]) // 2
        padded.append(np.pad(k / k.sum(), ((py, py), (px, px))))
    h_image, h_out = (np.fft.fft2(np.fft.ifftshift(k)) for k in padded)
    ratio = h_image * np.conj(h_out) / (np.abs(h_out) ** 2 + regularisation)
    kernel = np.fft.fftshift(np.fft.ifft2(ratio).real)
    return kernel / kernel.sum()


#: header cards that state a kernel file's own pixel scale in arcsec/px (IRAC PRFs: SECPIX)
PIXSCALE_CARDS = ("SECPIX", "PIXSCALE", "PIXSCAL1")


def read_psf(path: str | Path, *, pixscale: float | None = None, image_pixscale: float | None = None) -> np.ndarray:
    """A measured PSF from a FITS image, checked, optionally resampled, unit sum, odd size.

    Parameters
    ----------
    path : str or Path
    pixscale : float, optional
        The PSF file's pixel scale (arcsec/px); default its ``SECPIX``,
        ``PIXSCALE`` or ``PIXSCAL1`` card, if any.
    image_pixscale : float, optional
        The image's pixel scale; with a pixel scale of the file the PSF is resampled to it.

    Raises
    ------
    InputError
        Not a readable FITS image, or not a PSF kernel: a non-finite pixel,
        no positive pixel, more than 10% of its flux negative, its peak away
        from the centre, or its light not concentrated (an extended image).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astropy.io import fits
    >>> path = Path(tempfile.mkdtemp()) / "psf.fits"
    >>> fits.writeto(path, moffat_psf(3.0, size=25))
    >>> read_psf(path).shape
    (25, 25)
    """
    from .fits_io import read_image

    image = read_image(path, min_size=3)
    check_kernel(image.data, path)
    kernel = image.data
    pixscale = pixscale if pixscale is not None else card_pixscale(image.header)
    if pixscale is not None and image_pixscale is not None:
        from scipy import ndimage

        kernel = ndimage.zoom(kernel, pixscale / image_pixscale, order=3)
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        kernel = np.pad(kernel, ((0, 1 - kernel.shape[0] % 2), (0, 1 - kernel.shape[1] % 2)))
    kernel = np.clip(kernel, 0, None)
    return kernel / kernel.sum()


def card_pixscale(header) -> float | None:
    """A kernel file's own pixel scale (arcsec/px) from its header, or None."""
    for key in PIXSCALE_CARDS:
        value = header.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def check_kernel(data: np.ndarray, path: str | Path) -> None:
    """Raise InputError naming ``path`` unless ``data`` looks like a PSF kernel.

    A kernel is finite, has positive flux (at most 10% of it in negative
    pixels: the noise of an empirical PSF), peaks within max(2 px, 10% of its
    side) of its centre, and holds half its light within 35% of its
    half-width of the centre: a galaxy or a star field given as a PSF fails.
    """
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputError(f"{path}: PSF has {bad} NaN or infinite pixels; a PSF kernel is finite everywhere")
    positive = np.clip(data, 0, None)
    if positive.sum() <= 0:
        raise InputError(f"{path}: PSF has no positive pixels")
    negative = -data[data < 0].sum() / positive.sum()
    if negative > 0.1:
        raise InputError(f"{path}: {negative:.0%} of the PSF's flux is in negative pixels (at most 10%): not a PSF kernel")
    ny, nx = data.shape
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    py, px = np.unravel_index(int(np.argmax(data)), data.shape)
    offset, limit = float(np.hypot(py - cy, px - cx)), max(2.0, 0.1 * min(ny, nx))
    if offset > limit:
        raise InputError(f"{path}: PSF peak at pixel ({px}, {py}) is {offset:.0f} px from the kernel centre "
                         f"(at most {limit:.0f}): a PSF kernel is centred")
    y, x = np.mgrid[:ny, :nx]
    radius = np.hypot(y - cy, x - cx).ravel()
    order = np.argsort(radius, kind="stable")
    enclosed = np.cumsum(positive.ravel()[order]) / positive.sum()
    r50 = float(radius[order][np.searchsorted(enclosed, 0.5)])
    half = min(ny, nx) / 2
    if r50 > 0.35 * half:
        raise InputError(f"{path}: half the PSF's light lies beyond {r50:.0f} px of its centre, "
                         f"{r50 / half:.0%} of the kernel's half-width (at most 35%): an extended image, not a PSF")


def measure_fwhm(kernel: np.ndarray, *, oversample: int = 8) -> float:
    """FWHM in pixels of a centred, roughly circular kernel (for file and Airy PSFs).

    The kernel is interpolated ``oversample`` times finer (cubic) and the area
    above half its peak is taken as a disc: ``fwhm = 2 sqrt(area / pi)``.
    """
    from scipy import ndimage

    fine = ndimage.zoom(np.asarray(kernel, dtype=np.float64), oversample, order=3, grid_mode=True, mode="grid-constant")
    area = np.count_nonzero(fine >= 0.5 * fine.max()) / oversample**2
    return float(2.0 * np.sqrt(area / np.pi))


def parse_range(value: float | str | None, key: str) -> tuple[float, float] | None:
    """``4`` -> ``(4.0, 4.0)``; ``'2.5:5.5'`` -> ``(2.5, 5.5)``; anything else is a ConfigError naming ``key``.

    Examples
    --------
    >>> parse_range("2.5:5.5", "psf.fwhm")
    (2.5, 5.5)
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        parts = str(value).split(":")
        try:
            lo, hi = (float(parts[0]), float(parts[-1])) if len(parts) in (1, 2) else (None, None)
        except ValueError:
            lo = hi = None
        if lo is None:
            raise ConfigError(f"{key}: expected a number or a range 'lo:hi', got {value!r}")
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ConfigError(f"{key}: expected 0 < lo <= hi, got {value!r} (a number > 0, or for prepare a range lo:hi)")
    return lo, hi


@dataclass(frozen=True)
class PSF:
    """A PSF specification that builds its kernel and records itself.

    Parameters
    ----------
    shape : {'moffat', 'gaussian', 'airy', 'file', 'auto'}
        ``'auto'``: measured from each image's own stars (deblur). A comma list (``'moffat,gaussian'``) is a training distribution: each
        image or tile draws one (:meth:`draw`).
    fwhm : float or str
        FWHM in pixels (moffat, gaussian), or a range ``'lo:hi'`` (training).
    beta : float or str
        Moffat power index (astropy ``alpha``), or a range.
    radius : float or str or None
        Airy first-zero radius in pixels, or a range.
    path : str or None
        FITS kernel (shape ``'file'``).
    pixscale : float or None
        The kernel file's pixel scale (arcsec/px): resampled to the image's.
    image_pixscale : float or None
        The image's pixel scale (arcsec/px), when its header has no celestial WCS.
    size : int
        Kernel side for analytic shapes (odd).

    Examples
    --------
    >>> from astrosr.psf import PSF
    >>> PSF(fwhm=3.5).describe()
    'Moffat FWHM=3.5px beta=3 41x41'
    >>> PSF.from_keys({"shape": "gaussian", "beta": 2.0})
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: psf.beta: not used by psf.shape gaussian; drop it
    """

    shape: str = "moffat"
    fwhm: float | str = 4.0
    beta: float | str = 3.0
    radius: float | str | None = None
    path: str | None = None
    pixscale: float | None = None
    image_pixscale: float | None = None
    size: int = 41

    def __post_init__(self) -> None:
        for shape in self.shapes:
            if shape not in PSF_SHAPES:
                # a user names the three analytic shapes; 'file' and 'auto' follow from psf.path (--psf FILE / auto)
                raise ConfigError(f"psf.shape: psf shape must be moffat, gaussian or airy (a kernel file or 'auto': "
                                  f"psf.path), got {shape!r}")
        for single in ("file", "auto"):
            if single in self.shapes and len(self.shapes) > 1:
                raise ConfigError(f"psf shape: {single!r} cannot be mixed with other shapes, got {self.shape!r}")
        if self.shape == "file" and not self.path:
            raise ConfigError("psf shape 'file' needs a path (psf.path)")
        if self.path and self.shape != "file":
            raise ConfigError(f"psf.path: given with psf shape {self.shape!r}; a PSF file is its own shape")
        if "airy" in self.shapes and self.radius is None:
            raise ConfigError("psf shape 'airy' needs a radius (psf.radius R)")
        for key in ("fwhm", "beta", "radius"):
            parse_range(getattr(self, key), f"psf.{key}")
        if parse_range(self.beta, "psf.beta")[0] <= 1:
            raise ConfigError(f"psf.beta: must be > 1, got {self.beta!r}")
        if self.size < 3 or self.size % 2 == 0:
            raise ConfigError(f"psf.size: must be an odd integer >= 3, got {self.size}")
        for key in ("pixscale", "image_pixscale"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"psf.{key}: must be > 0 arcsec/px, got {value!r}")

    @classmethod
    def from_keys(cls, keys: dict[str, Any] | None = None, *, where: str = "psf") -> PSF:
        """A PSF from the keys a user gave (a YAML ``psf:`` section, CLI flags), bench-v1's for the rest.

        A key the shape does not use (``beta`` for a Gaussian, ``fwhm`` beside
        a ``path``) is an error naming it: silently ignoring it would deblur
        or score with another PSF than the one asked for. A ``path`` alone
        means shape ``'file'``.
        """
        if keys == "auto":
            keys = {"shape": "auto"}
        if keys is not None and not isinstance(keys, dict):
            raise ConfigError(f"{where}: expected a mapping of PSF keys or 'auto', got {keys!r}")
        keys = {k: v for k, v in (keys or {}).items() if v is not None}
        if keys.get("path") == "auto":  # --psf auto: measured from each image's stars
            keys.pop("path")
            keys.setdefault("shape", "auto")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(keys) - set(names))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(names)})")
        if "path" in keys:
            keys.setdefault("shape", "file")
            if keys["shape"] != "file":
                raise ConfigError(f"{where}.shape: {keys['shape']!r} given with {where}.path; a PSF file is its own shape")
        shapes = [s.strip() for s in str(keys.get("shape", "moffat")).split(",")]
        used = {k for s in shapes for k in SHAPE_KEYS.get(s, ())} | {"shape"}
        extra = [k for k in keys if k not in used]
        if extra and all(s in SHAPE_KEYS for s in shapes):
            if "path" in keys:
                raise ConfigError(f"{where}.{extra[0]}: not used with {where}.path {keys['path']} "
                                  "(a PSF file is its own shape); drop one of them")
            raise ConfigError(f"{where}.{extra[0]}: not used by {where}.shape {keys.get('shape', 'moffat')}; drop it")
        for key in ("fwhm", "beta", "radius", "pixscale", "image_pixscale"):  # '3' typed is 3; '2.5:5.5' a range
            if isinstance(keys.get(key), str):
                try:
                    keys[key] = float(keys[key])
                except ValueError:
                    pass
        from .config import from_dict

        return from_dict(cls, keys, where=where, build=False)

    # --- a distribution of PSFs (training data) ----------------------------------
    @property
    def shapes(self) -> list[str]:
        """The shape, or the shapes of a comma list."""
        return [s.strip() for s in str(self.shape).split(",")]

    def _ranged(self, key: str) -> bool:
        value = parse_range(getattr(self, key), key)
        return value is not None and value[0] != value[1]

    @property
    def ranged(self) -> bool:
        """True for a distribution (several shapes or a range), False for one PSF."""
        return len(self.shapes) > 1 or any(self._ranged(k) for k in ("fwhm", "beta", "radius"))

    def _concrete(self, shape: str, pick) -> PSF:
        if shape == "file":
            return self
        values = {"fwhm": pick("fwhm"), "beta": pick("beta")}
        if self.radius is not None:
            values["radius"] = pick("radius")
        return PSF(shape=shape, size=self.size, **values)

    def nominal(self) -> PSF:
        """The one PSF of a test field: fixed values kept, ranges -> bench-v1's (FWHM 4, beta 3; radius: mid-range)."""
        def pick(key):
            lo, hi = parse_range(getattr(self, key), key)
            return BENCH_VALUES.get(key, 0.5 * (lo + hi)) if lo != hi else lo

        shape = self.shapes[0] if len(self.shapes) == 1 else ("moffat" if "moffat" in self.shapes else self.shapes[0])
        return self._concrete(shape, pick)

    def draw(self, rng: np.random.Generator) -> PSF:
        """One PSF of the distribution; only the ranged values and a shape list consume ``rng``."""
        def pick(key):
            lo, hi = parse_range(getattr(self, key), key)
            return float(rng.uniform(lo, hi)) if lo != hi else lo

        shape = self.shapes[int(rng.integers(len(self.shapes)))] if len(self.shapes) > 1 else self.shapes[0]
        return self._concrete(shape, pick)

    # --- one PSF --------------------------------------------------------------
    def ranged_key(self) -> str | None:
        """The first key that makes this a distribution (``shape`` for a list, ``fwhm``...), or None."""
        if len(self.shapes) > 1:
            return "shape"
        return next((k for k in ("fwhm", "beta", "radius") if self._ranged(k)), None)

    def _single(self) -> None:
        if self.ranged:
            raise ConfigError(f"psf: {self.describe()} is a range of PSFs (for prepare); an image has one PSF")

    def kernel(self) -> np.ndarray:
        """The kernel as a float64 array of unit sum."""
        self._single()
        if self.shape == "auto":
            raise ConfigError("psf: 'auto' is measured from each image's own stars (astrosr psf); it has no kernel of "
                              "its own here: state the PSF (a file, or an FWHM)")
        if self.shape == "moffat":
            return moffat_psf(float(self.fwhm), beta=float(self.beta), size=self.size)
        if self.shape == "gaussian":
            return gaussian_psf(float(self.fwhm), size=self.size)
        if self.shape == "airy":
            return airy_psf(float(self.radius), size=self.size)
        return read_psf(self.path, pixscale=self.pixscale, image_pixscale=self.image_pixscale)

    def fwhm_px(self, kernel: np.ndarray | None = None) -> float:
        """FWHM in pixels: the analytic one, else measured on the kernel (file and Airy PSFs)."""
        if self.shape in ("moffat", "gaussian"):
            return float(self.fwhm)
        return measure_fwhm(self.kernel() if kernel is None else kernel)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for reports and FITS HISTORY."""
        if len(self.shapes) > 1:
            return f"PSFs {self.shape} FWHM {self.fwhm} beta {self.beta}"
        if self.shape == "moffat":
            return f"Moffat FWHM={self.fwhm:g}px beta={self.beta:g} {self.size}x{self.size}" if not self.ranged \
                else f"Moffat FWHM {self.fwhm} beta {self.beta}"
        if self.shape == "gaussian":
            return f"Gaussian FWHM={self.fwhm:g}px" if not self.ranged else f"Gaussian FWHM {self.fwhm}"
        if self.shape == "airy":
            return f"Airy first-zero radius={self.radius:g}px" if not self.ranged else f"Airy radius {self.radius}"
        if self.shape == "auto":
            return "auto (measured from the image's stars)"
        return f"PSF file {self.path}"

    def file_pixscale(self) -> float | None:
        """A file PSF's pixel scale (arcsec/px): the ``pixscale`` key, else the kernel's own card; else None."""
        if self.shape != "file":
            return None
        if self.pixscale is not None:
            return float(self.pixscale)
        from .fits_io import read_image

        return card_pixscale(read_image(self.path, min_size=3).header)

    def for_image(self, header, path: str | Path) -> PSF:
        """This PSF for one image: a file PSF with a pixel scale gets the image's, to be resampled to it.

        The image's scale is ``image_pixscale`` when given, else its WCS's;
        an image with neither is an error naming ``path``.
        """
        scale = self.file_pixscale()
        if scale is None or self.image_pixscale is not None:
            return self
        from .fits_io import pixel_scale

        image_scale = pixel_scale(header)
        if image_scale is None:
            raise InputError(f"{path}: no celestial WCS to resample the PSF to (a {scale:g} arcsec/px kernel); "
                             "give psf.image_pixscale")
        return dataclasses.replace(self, pixscale=scale, image_pixscale=image_scale)

    def absolute(self) -> PSF:
        """The same PSF with a file named by its absolute path (one identity from any directory)."""
        if self.shape == "file":
            return dataclasses.replace(self, path=str(Path(self.path).resolve()))
        return self

    def identity(self) -> str:
        """The one-line name recorded in output headers and compared when skipping.

        Analytic PSFs are named by their parameters; a file PSF also by the
        sha256 of its file, so a changed kernel under the same name is noticed.
        """
        from .files import sha256_file

        text = self.describe()
        if self.shape == "file":
            if not Path(self.path).is_file():
                raise InputError(f"{self.path}: PSF file not found")
            text += f" sha256 {sha256_file(self.path)[:16]}"
            scale = self.file_pixscale() if self.image_pixscale is not None else None  # no resampling: no card to read
            if scale is not None:
                text += f" resampled {scale:g}->{self.image_pixscale:g} arcsec/px"
        return text


BENCH_V1_PSF = PSF()


def kernel_and_fwhm(psf: PSF | np.ndarray) -> tuple[np.ndarray, float]:
    """``(kernel, fwhm_px)`` of a :class:`PSF` or of a 2-D kernel array (normalised to unit sum)."""
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
