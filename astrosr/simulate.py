"""Simulated sky images: stars, Sersic galaxies, sky and noise, with a TAN WCS.

Kept together as one module: every simulated image astrosr draws (training
fields and the star fields tests check a measured PSF against) is made here.

They are astrosr's embedded data (no download) and, from seed 1000 on, its
own part of bench-v1's ``simulated`` field. Seeds 0-499 are for training,
500-999 for development and validation, and seeds >= 1000 are test fields
that never go into training or model selection (1000-1999 bench-v1's
simulated field, 2000 and up sky-v1's; ``benchmarks/README.md``, section
Conventions astrosr follows). Image ``index`` of seed ``seed`` is drawn from
``numpy.random.default_rng([seed, index])``, so each file is reproducible on
its own and asking for more images (a larger ``n``) only adds files.

Each image: a flat sky, one bright Sersic galaxy near the centre plus a few
small background galaxies (astropy.modeling ``Sersic2D``, convolved with the
seeing PSF), 30-200 stars with power-law fluxes rendered as that same Moffat
PSF, and Gaussian noise. Every parameter is in the header (keys and HISTORY).

Examples
--------
>>> import tempfile
>>> from astrosr.simulate import simulate_fields
>>> paths = simulate_fields(tempfile.mkdtemp(), n=2, seed=500, size=128)
>>> [p.name for p in paths]
['sim_s500_000.fits', 'sim_s500_001.fits']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .config import check_options, option, replace
from .progress import ProgressCallback, report
from .psf import gamma_of_fwhm, moffat_psf, parse_range
from .errors import ConfigError, InputError
from .files import atomic_path, make_dir

__all__ = ["SimulateOptions", "sim_name", "simulate_image", "write_simulated", "simulate_fields", "example_field", "star_field"]

PIXSCALE_ARCSEC = 0.4
#: The star count of a field, drawn uniformly unless a range is asked for
STARS = (30, 200)


def sim_name(seed: int, index: int) -> str:
    """File name of simulated image ``index`` of ``seed``: ``sim_s{seed}_{index:03d}.fits``.

    Examples
    --------
    >>> sim_name(1000, 3)
    'sim_s1000_003.fits'
    """
    return f"sim_s{seed}_{index:03d}.fits"


def _moffat_stamp(dy, dx, gamma, beta, half=20):
    """A Moffat star centred at sub-pixel offset (dy, dx) from the stamp centre, unit sum."""
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    stamp = (1.0 + ((x - dx) ** 2 + (y - dy) ** 2) / gamma**2) ** (-beta)
    return stamp / stamp.sum()


def _add_stamp(image, stamp, cy, cx):
    half = stamp.shape[0] // 2
    ny, nx = image.shape
    y0, x0 = cy - half, cx - half
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + stamp.shape[0], ny), min(x0 + stamp.shape[1], nx)
    if ys < ye and xs < xe:
        image[ys:ye, xs:xe] += stamp[ys - y0 : ye - y0, xs - x0 : xe - x0]


def _check_peaks(faintest: float, brightest: float) -> None:
    """The star peaks' range, faintest to brightest (noise std), must not be empty."""
    if brightest < faintest:
        raise ConfigError(f"simulate brightest: {brightest} is below faintest {faintest}")


def _log_map(u, a, b, lo, hi):
    """A draw ``u`` of a uniform a..b mapped log-uniformly onto lo..hi (the field's other draws stay as they are)."""
    return lo * (hi / lo) ** ((u - a) / (b - a))


def _galaxy(rng, size, noise, *, main, peak=None):
    """Parameters of one Sersic galaxy (a bright central one, or a small background one).

    ``peak``: the central galaxy's amplitude range in noise std, drawn
    log-uniformly from the same number as the default 1-8.
    """
    if main:
        centre = size / 2 + rng.uniform(-size / 8, size / 8, 2)
        u = float(rng.uniform(1.0, 8.0))
        amplitude = u if peak is None else _log_map(u, 1.0, 8.0, *peak)
        return dict(amplitude=float(amplitude * noise), r_eff=float(rng.uniform(8, 60)),
                    n=float(rng.uniform(0.7, 4.0)), x_0=float(centre[1]), y_0=float(centre[0]),
                    ellip=float(rng.uniform(0.0, 0.6)), theta=float(rng.uniform(0, np.pi)))
    return dict(amplitude=float(rng.uniform(0.5, 4.0) * noise), r_eff=float(rng.uniform(1.5, 8)),
                n=float(rng.uniform(0.5, 2.5)), x_0=float(rng.uniform(0, size)), y_0=float(rng.uniform(0, size)),
                ellip=float(rng.uniform(0.0, 0.7)), theta=float(rng.uniform(0, np.pi)))


def _render_galaxy(image, g):
    """Add Sersic2D ``g`` in a box of about 8 effective radii (the whole image for big ones)."""
    from astropy.modeling.models import Sersic2D  # on use: the CLI's -h stays fast

    reach = int(np.ceil(8 * g["r_eff"])) + 2
    size = image.shape[0]
    y0, y1 = max(int(g["y_0"]) - reach, 0), min(int(g["y_0"]) + reach + 1, size)
    x0, x1 = max(int(g["x_0"]) - reach, 0), min(int(g["x_0"]) + reach + 1, size)
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    image[y0:y1, x0:x1] += Sersic2D(**g)(x, y)


def simulate_image(rng: np.random.Generator, *, size: int = 512, psf_fwhm: float | None = None,
                   psf_beta: float | None = None, stars: tuple[float, float] | None = None,
                   faintest: float = 3.0, brightest: float = 5000.0,
                   galaxy_peak: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """One simulated field.

    Parameters
    ----------
    rng : numpy.random.Generator
    size : int
        Side in pixels (>= 128).
    psf_fwhm, psf_beta : float, optional
        The seeing Moffat's FWHM (px) and beta; drawn (1.5-2.5 px, 2.5-4.5)
        when not given. The same random numbers are drawn either way, so
        the rest of the field does not change with them.
    stars : (float, float), optional
        The range of the star count, drawn log-uniformly (a crowded field:
        thousands); 30-200, uniformly, when not given.
    faintest : float
        The faintest star's peak in noise std: the power law of fluxes
        starts there. Below 1, most of a crowd hides in the noise (a
        confusion-limited field, as in the Galactic bulge in the infrared).
    brightest : float
        The cap on a star's peak in noise std: the field's dynamic range
        (a crowd of faint stars with no bright one: tens).
    galaxy_peak : (float, float), optional
        The central galaxy's peak range in noise std, drawn log-uniformly;
        1-8, uniformly, when not given (bright, high-S/N galaxies: tens to
        hundreds).

    Returns
    -------
    data : ndarray (size, size) float32
        Sky + galaxies + stars + noise, in ADU.
    params : dict
        Every drawn parameter (sky, noise, seeing PSF, galaxies, star list summary).

    Raises
    ------
    ConfigError
        ``size`` is not an integer >= 128.

    Examples
    --------
    >>> import numpy as np
    >>> data, params = simulate_image(np.random.default_rng([0, 0]), size=128)
    >>> data.shape, data.dtype, params["psf"]["shape"]
    ((128, 128), dtype('float32'), 'moffat')
    """
    from scipy import signal

    if int(size) != size or size < 128:
        raise ConfigError(f"simulate size must be an integer >= 128, got {size}")
    size = int(size)
    sky = float(rng.uniform(100.0, 1000.0))
    noise = float(np.sqrt(sky) * rng.uniform(0.8, 1.5))
    fwhm = float(rng.uniform(1.5, 2.5))
    beta = float(rng.uniform(2.5, 4.5))
    fwhm = float(psf_fwhm) if psf_fwhm is not None else fwhm
    beta = float(psf_beta) if psf_beta is not None else beta
    gamma = gamma_of_fwhm(fwhm, beta)

    galaxies = [_galaxy(rng, size, noise, main=True, peak=galaxy_peak)]
    galaxies += [_galaxy(rng, size, noise, main=False) for _ in range(int(rng.integers(2, 9)))]
    light = np.zeros((size, size))
    for g in galaxies:
        _render_galaxy(light, g)
    reach = max(20, int(np.ceil(5 * fwhm)))  # the kernel's half-side: 41 px up to FWHM 4
    light = signal.fftconvolve(np.pad(light, reach, mode="edge"), moffat_psf(fwhm, beta=beta, size=2 * reach + 1),
                               mode="valid")

    # power law N(>F) ~ F**-alpha from a faint limit (peak ``faintest`` noise sigma) up to a cap (``brightest``)
    n_stars = int(rng.integers(STARS[0], STARS[1] + 1))
    if stars is not None:  # the same draw, mapped log-uniformly onto the range asked for
        n_stars = int(round(_log_map(n_stars, *STARS, *stars)))
    alpha = float(rng.uniform(0.6, 1.2))
    peak_fraction = _moffat_stamp(0.0, 0.0, gamma, beta).max()
    _check_peaks(faintest, brightest)
    f_min = faintest * noise / peak_fraction
    f_max = brightest * noise / peak_fraction
    fluxes = np.minimum(f_min * (1.0 - rng.uniform(0, 1, n_stars)) ** (-1.0 / alpha), f_max)
    positions = rng.uniform(0, size, (n_stars, 2))
    for flux, (py, px) in zip(fluxes, positions):
        cy, cx = int(np.floor(py)), int(np.floor(px))
        _add_stamp(light, flux * _moffat_stamp(py - cy - 0.5, px - cx - 0.5, gamma, beta, half=reach), cy, cx)

    data = sky + light + rng.normal(0.0, noise, (size, size))
    params = dict(size=size, sky=sky, noise_std=noise, psf=dict(shape="moffat", fwhm=fwhm, beta=beta),
                  galaxies=galaxies, n_stars=n_stars, star_alpha=alpha, star_faintest=float(faintest),
                  star_brightest=float(brightest),
                  star_flux_min=float(fluxes.min()), star_flux_max=float(fluxes.max()),
                  pixscale_arcsec=PIXSCALE_ARCSEC)
    return data.astype(np.float32), params


def _header(rng, params, seed, index):
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    size = params["size"]
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    wcs.wcs.crval = [float(rng.uniform(0, 360)), float(rng.uniform(-60, 60))]
    wcs.wcs.cdelt = [-PIXSCALE_ARCSEC / 3600, PIXSCALE_ARCSEC / 3600]
    wcs.wcs.cunit = ["deg", "deg"]
    header = wcs.to_header()
    header["OBJECT"] = (f"astrosr simulated field s{seed} #{index}", "not a real sky")
    header["BUNIT"] = "adu"
    header["SIMSEED"] = (seed, "astrosr simulate seed")
    header["SIMINDEX"] = (index, "image index within the seed")
    header["SKY"] = (params["sky"], "[adu] flat sky level")
    header["NOISESTD"] = (params["noise_std"], "[adu] Gaussian noise std")
    header["PSFFWHM"] = (params["psf"]["fwhm"], "[px] seeing Moffat FWHM")
    header["PSFBETA"] = (params["psf"]["beta"], "seeing Moffat beta")
    header["NSTARS"] = (params["n_stars"], "stars (power-law fluxes)")
    header["NGALAXY"] = (len(params["galaxies"]), "Sersic galaxies")
    header["HISTORY"] = f"astrosr {__version__} simulate seed={seed} index={index} rng=default_rng([seed, index])"
    header["HISTORY"] = "params " + json.dumps(params, separators=(",", ":"))
    return header


def write_simulated(path: str | Path, *, seed: int, index: int, size: int = 512, overwrite: bool = False,
                    psf_fwhm: float | None = None, psf_beta: float | None = None,
                    stars: tuple[float, float] | None = None, faintest: float = 3.0, brightest: float = 5000.0,
                    galaxy_peak: tuple[float, float] | None = None) -> dict:
    """Simulate image ``index`` of ``seed`` and write it atomically to ``path``.

    Parameters
    ----------
    path : str or Path
        Output FITS file.
    seed, index : int
        The image drawn is ``default_rng([seed, index])``'s.
    size : int
        Image side in pixels (>= 128).
    overwrite : bool
        Replace an existing file (otherwise it is an error).
    psf_fwhm, psf_beta, stars, faintest, brightest, galaxy_peak
        As :func:`simulate_image`'s.

    Returns
    -------
    dict
        The drawn parameters.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / sim_name(0, 0)
    >>> write_simulated(path, seed=0, index=0, size=128)["size"]
    128
    """
    from astropy.io import fits

    rng = np.random.default_rng([int(seed), int(index)])
    data, params = simulate_image(rng, size=size, psf_fwhm=psf_fwhm, psf_beta=psf_beta, stars=stars,
                                  faintest=faintest, brightest=brightest, galaxy_peak=galaxy_peak)
    header = _header(rng, params, seed, index)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fits.PrimaryHDU(data, header=header).writeto(tmp)
    return params


@dataclass(frozen=True)
class SimulateOptions:
    """Which simulated fields to write: the library argument, a pipeline's ``simulate:`` sets and the CLI flags.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        0-499 train, 500-999 development and validation, >= 1000 test
        fields (never trained on).
    size : int
        Image side in pixels.
    psf_fwhm, psf_beta : float or None
        The seeing Moffat (FWHM in px, beta) of every image; drawn per image
        (1.5-2.5 px, 2.5-4.5) when not given. sky-v1's fields "as observed"
        state it, so a measured PSF can be checked against the truth.
    stars : str or None
        The star count's range ``'lo:hi'`` (drawn log-uniformly per image),
        e.g. ``'1500:6000'`` for a crowded field; 30-200 when not given.
    faintest : float
        The faintest star's peak in noise std (3); below 1 a crowd is
        confusion-limited: most of its stars hide in the noise.
    brightest : float
        The cap on a star's peak in noise std (5000): the field's dynamic
        range.
    galaxy_peak : str or None
        The central galaxy's peak range ``'lo:hi'`` in noise std (drawn
        log-uniformly per image); 1-8 when not given.

    Examples
    --------
    >>> SimulateOptions(n=0)
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: n: must be >= 1, got 0
    """

    n: int = option(4, minimum=1, help="Number of images.")
    seed: int = option(0, minimum=0, help="Seeds >= 1000 are the simulated test field.")
    size: int = option(512, minimum=128, help="Image side in pixels.")
    psf_fwhm: float | None = option(None, minimum=0.5, help="Seeing Moffat FWHM in px [drawn, 1.5-2.5].")
    psf_beta: float | None = option(None, minimum=1.1, help="Seeing Moffat beta [drawn, 2.5-4.5].")
    stars: str | None = option(None, help="Star count range lo:hi, drawn log-uniformly (crowded: 1500:6000) [30:200].")
    faintest: float = option(3.0, minimum=0.01,
                             help="Faintest star's peak in noise std (below 1: a confusion-limited crowd).")
    brightest: float = option(5000.0, minimum=0.01, help="Cap on a star's peak in noise std: the dynamic range.")
    galaxy_peak: str | None = option(None,
                                     help="Central galaxy's peak range lo:hi in noise std, drawn log-uniformly [1:8].")

    def __post_init__(self):
        check_options(self)
        _check_peaks(self.faintest, self.brightest)  # here too: an error before any image is written
        self.star_range()  # a malformed range is an error here, before any work
        self.galaxy_peak_range()

    def star_range(self) -> tuple[float, float] | None:
        """``stars`` as ``(lo, hi)``, or None."""
        if self.stars is None:
            return None
        lo, hi = parse_range(self.stars, "simulate stars")
        if lo < 1:
            raise ConfigError(f"simulate stars: expected counts >= 1, got {self.stars!r}")
        return lo, hi

    def galaxy_peak_range(self) -> tuple[float, float] | None:
        """``galaxy_peak`` as ``(lo, hi)``, or None."""
        if self.galaxy_peak is None:
            return None
        return parse_range(self.galaxy_peak, "simulate galaxy_peak")


def simulate_fields(
    out_dir: str | Path,
    options: SimulateOptions | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressCallback = None,
    **keys,
) -> list[Path]:
    """Write ``n`` simulated images ``sim_s{seed}_{i:03d}.fits`` into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing.
    options : SimulateOptions, optional
        ``n``, ``seed`` and ``size``; ``keys`` (``n=2``...) override its fields.
    overwrite : bool
        Replace existing files (otherwise an existing file is an error).
    progress : callable, optional
        ``progress('images', done, n)`` after each image (:mod:`astrosr.progress`).

    Returns
    -------
    list of Path

    Raises
    ------
    ConfigError
        ``n`` < 1, ``seed`` < 0 or ``brightest`` below ``faintest``.
    InputError
        An output exists and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in simulate_fields(tempfile.mkdtemp(), n=1, seed=1000, size=128)]
    ['sim_s1000_000.fits']
    """
    o = replace(options or SimulateOptions(), **keys) if keys or options is None else options
    n, seed, size = o.n, o.seed, o.size
    out_dir = make_dir(out_dir)  # a place that cannot be written is an error before any work
    paths = [out_dir / sim_name(seed, i) for i in range(n)]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]}: output exists (overwrite=True replaces it)")
    for i, path in enumerate(paths):
        write_simulated(path, seed=seed, index=i, size=size, overwrite=overwrite, psf_fwhm=o.psf_fwhm,
                        psf_beta=o.psf_beta, stars=o.star_range(), faintest=o.faintest,
                        brightest=o.brightest, galaxy_peak=o.galaxy_peak_range())
        report(progress, "images", i + 1, n)
    return paths


def example_field(*, seed: int = 500, size: int = 128) -> Path:
    """A small simulated field in a new temporary directory: the image the docstring examples use.

    Seed 500 is a development field (never a training or test image).

    Examples
    --------
    >>> from astrosr.simulate import example_field
    >>> example_field().name
    'sim_s500_000.fits'
    """
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="astrosr-example-")) / sim_name(seed, 0)
    write_simulated(path, seed=seed, index=0, size=size)
    return path


def star_field(fwhm: float = 3.0, beta: float = 3.0, *, ellipticity: float = 0.0, angle: float = 0.0,
               fwhm_right: float | None = None, size: int = 256, stars: int = 80, sky: float = 100.0,
               noise: float = 1.0, seed: int = 500, subpixels: int = 8) -> np.ndarray:
    """A star field "as observed" with a known, pixel-integrated Moffat PSF (the truth PSF tests check against).

    Each star is astropy's ``Moffat2D`` averaged over ``subpixels`` x
    ``subpixels`` samples per pixel, made elliptical by stretching its
    coordinates (axis ratio ``1 - ellipticity``, major axis at ``angle``
    degrees from +x; ``fwhm`` is the geometric mean of the two axes' FWHM).
    With ``fwhm_right`` the FWHM grows linearly from ``fwhm`` at the left
    edge to ``fwhm_right`` at the right one. Peaks span about 30 to 3000
    times ``noise``; flat sky; Gaussian noise. Seeds 500-999 are for
    development; 2000 and up are sky-v1's test fields.

    Examples
    --------
    >>> image = star_field(fwhm=2.5, seed=501, size=128, stars=10)
    >>> image.shape, round(float(np.median(image)))
    ((128, 128), 100)
    """
    from astropy.modeling.models import Moffat2D

    rng = np.random.default_rng(seed)
    image = np.full((size, size), sky, dtype=np.float64)
    widest = max(fwhm, fwhm_right or fwhm)
    half = int(np.ceil(5 * widest))
    q, theta = 1.0 - ellipticity, np.radians(angle)
    offsets = (np.arange(subpixels) + 0.5) / subpixels - 0.5
    grid = np.arange(-half, half + 1, dtype=np.float64)
    sub = (grid[:, None] + offsets[None, :]).ravel()
    for _ in range(stars):
        cx, cy = rng.uniform(half, size - 1 - half, 2)
        here = fwhm if fwhm_right is None else fwhm + (fwhm_right - fwhm) * cx / size
        gamma = gamma_of_fwhm(here, beta)
        ix, iy = int(round(cx)), int(round(cy))
        v, u = np.meshgrid(sub - (cy - iy), sub - (cx - ix), indexing="ij")
        major, minor = u * np.cos(theta) + v * np.sin(theta), -u * np.sin(theta) + v * np.cos(theta)
        model = Moffat2D(amplitude=1.0, x_0=0.0, y_0=0.0, gamma=gamma, alpha=beta)
        stamp = model(major * np.sqrt(q), minor / np.sqrt(q))
        n = len(grid)
        stamp = stamp.reshape(n, subpixels, n, subpixels).mean(axis=(1, 3))
        stamp /= stamp.max()
        peak = noise * 30.0 * 100.0 ** rng.uniform(0.0, 1.0)
        image[iy - half : iy + half + 1, ix - half : ix + half + 1] += peak * stamp
    return image + rng.normal(0.0, noise, image.shape)
