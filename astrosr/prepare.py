"""FITS images -> one HDF5 file of blurred/original tile pairs (the pairs file).

Each image is read (:mod:`astrosr.fits_io`), degraded whole (:mod:`astrosr.degrade`:
PSF convolution with extended edges, Gaussian noise at a multiple of ORI's
sigma-clipped background std, optional Poisson term, optional block averaging
by ``scale``), cut on bench-v1's grid (:mod:`astrosr.tiling`; tiles with NaN in
ORI skipped), normalised with ORI's 0.5/99.9 percentiles *without* the clip,
and appended to the file through :class:`astrosr.pairs.PairsWriter` (the
file's layout is documented in :mod:`astrosr.pairs`).

Noise and randomisation (CONTRACTS.md 2): images of a test field (anything
but ``train``) get exactly bench-v1's recipe with the config's fixed PSF and
noise factor and a fresh ``default_rng(0)``; a parameter given as a range
(``'2.5:5.5'``) takes bench-v1's value there (Moffat, FWHM 4, beta 3, noise
1). Train image ``i`` uses the child stream ``SeedSequence(seed, spawn_key=(i,))`` (never the test fields' ``default_rng(0)``), draw ranged
parameters from it per image or per tile, and get the Poisson term if asked.
``blu_lo``/``blu_hi``/``blu_bg_std`` come from the whole BLU image (with
per-tile randomisation, from all of the image's BLU tiles together). An image
whose bytes also appear in a test field cannot be a train image, and simulated
images of seed >= 1000 (the simulated test field) cannot either.
"""

import dataclasses
import json
import signal as _signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .config import to_dict
from .degrade import background_stats, block_average, degrade, percentile_limits
from .psf import PSF
from .errors import ConfigError, InputError
from .files import check_not_input, sha256_file
from .fits_io import read_image
from .pairs import COMPRESSION, PairsWriter
from .progress import report
from .tiling import extract_tiles, grid_origins, nan_free

__all__ = ["PrepareConfig", "prepare_pairs", "parse_range", "TRAIN_FIELD"]

TRAIN_FIELD = "train"
_BENCH = {"psf_fwhm": 4.0, "psf_beta": 3.0, "noise": 1.0}
_COMPRESSION = COMPRESSION  # the pairs file's filters, by PrepareConfig.compression


def parse_range(value, key):
    """``4`` -> ``(4.0, 4.0)``; ``'2.5:5.5'`` -> ``(2.5, 5.5)``; anything else is a ConfigError naming ``key``."""
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
        raise ConfigError(f"{key}: expected 0 < lo <= hi, got {value!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides a pairs file (recorded in its ``config`` attribute).

    Parameters
    ----------
    psf_shape : str
        ``moffat``, ``gaussian``, ``airy`` or ``file``; a comma list
        (``'moffat,gaussian'``) draws one per image/tile for train images.
    psf_fwhm, psf_beta : float or str
        Moffat/Gaussian FWHM (px) and Moffat beta, or ranges ``'lo:hi'``.
    psf_radius : float or str or None
        Airy first-zero radius (px), or a range.
    psf_file : str or None
        FITS PSF kernel (``psf_shape='file'`` is implied).
    psf_pixscale : float or None
        The PSF file's pixel scale (arcsec/px): resample it to each image's scale.
    image_pixscale : float or None
        Image pixel scale (arcsec/px) when the header has no celestial WCS.
    psf_size : int
        Side of analytic kernels (odd).
    randomise : {'image', 'tile'}
        Draw ranged parameters once per train image or once per tile.
    noise : float or str
        Gaussian noise std as a multiple of ORI's sigma-clipped background std (or a range).
    poisson_gain : float or None
        Gain (e-/ADU) of an extra Poisson term for train images.
    scale : int
        Block-average BLU by this factor (BLU tiles ``tile/scale``).
    seed : int
        Train image ``i`` uses the child stream ``SeedSequence(seed, spawn_key=(i,))``: never bench-v1's
        ``default_rng(0)`` of the test fields (``seed + i``, and even ``[seed, i]``, hand image 0 that
        very noise field).
    tile, stride : int
        Tile side and grid step (default: ``tile``, non-overlapping).
    hdu : int or str or None
    plane : int or None
    compression : {'lzf', 'gzip', 'none'}
    """

    psf_shape: str = "moffat"
    psf_fwhm: float | str = 4.0
    psf_beta: float | str = 3.0
    psf_radius: float | str | None = None
    psf_file: str | None = None
    psf_pixscale: float | None = None
    image_pixscale: float | None = None
    psf_size: int = 41
    randomise: str = "image"
    noise: float | str = 1.0
    poisson_gain: float | None = None
    scale: int = 1
    seed: int = 0
    tile: int = 128
    stride: int | None = None
    hdu: int | str | None = None
    plane: int | None = None
    compression: str = "lzf"

    def __post_init__(self):
        if self.psf_file and self.psf_shape == "moffat":
            object.__setattr__(self, "psf_shape", "file")
        for shape in self.shapes:
            if shape not in ("moffat", "gaussian", "airy", "file"):
                raise ConfigError(f"psf_shape: expected moffat, gaussian, airy or file, got {shape!r}")
        if "file" in self.shapes and (len(self.shapes) > 1 or not self.psf_file):
            raise ConfigError("psf_shape: 'file' needs psf_file and cannot be mixed with other shapes")
        if self.psf_file and self.shapes != ["file"]:
            raise ConfigError(f"psf_file: given with psf_shape {self.psf_shape!r}; a PSF file is its own shape")
        if "airy" in self.shapes and self.psf_radius is None:
            raise ConfigError("psf_radius: required for the airy shape")
        for key in ("psf_fwhm", "psf_beta", "psf_radius", "noise"):
            parse_range(getattr(self, key), key)
        if parse_range(self.psf_beta, "psf_beta")[0] <= 1:
            raise ConfigError(f"psf_beta: must be > 1, got {self.psf_beta!r}")
        if self.randomise not in ("image", "tile"):
            raise ConfigError(f"randomise: expected 'image' or 'tile', got {self.randomise!r}")
        if self.compression not in _COMPRESSION:
            raise ConfigError(f"compression: expected lzf, gzip or none, got {self.compression!r}")
        stride = self.stride or self.tile
        if self.scale < 1 or self.tile < 8 or stride < 1 or self.tile % self.scale or stride % self.scale:
            raise ConfigError(f"scale: tile ({self.tile}) and stride ({stride}) must be multiples of scale "
                              f"({self.scale}) >= 1, tile >= 8")
        if self.psf_size < 3 or self.psf_size % 2 == 0:
            raise ConfigError(f"psf_size: must be an odd integer >= 3, got {self.psf_size}")
        if self.poisson_gain is not None and not self.poisson_gain > 0:
            raise ConfigError(f"poisson_gain: must be > 0, got {self.poisson_gain}")
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")

    @property
    def shapes(self):
        return [s.strip() for s in str(self.psf_shape).split(",")]

    def _ranged(self, key):
        value = parse_range(getattr(self, key), key)
        return value is not None and value[0] != value[1]

    def nominal(self):
        """``(psf_params, noise_factor)`` for test fields: fixed values kept, ranges -> bench-v1's."""
        def pick(key):
            lo, hi = parse_range(getattr(self, key), key)
            return _BENCH.get(key, 0.5 * (lo + hi)) if lo != hi else lo

        shape = self.shapes[0] if len(self.shapes) == 1 else ("moffat" if "moffat" in self.shapes else self.shapes[0])
        params = {"shape": shape, "fwhm": pick("psf_fwhm"), "beta": pick("psf_beta")}
        if self.psf_radius is not None:
            params["radius"] = pick("psf_radius")
        return params, pick("noise")

    def draw(self, rng):
        """``(psf_params, noise_factor)`` for a train image or tile; only ranged values consume ``rng``."""
        def pick(key):
            if getattr(self, key) is None:
                return None
            lo, hi = parse_range(getattr(self, key), key)
            return float(rng.uniform(lo, hi)) if lo != hi else lo

        shape = self.shapes[int(rng.integers(len(self.shapes)))] if len(self.shapes) > 1 else self.shapes[0]
        params = {"shape": shape, "fwhm": pick("psf_fwhm"), "beta": pick("psf_beta")}
        if self.psf_radius is not None:
            params["radius"] = pick("psf_radius")
        return params, pick("noise")

    @property
    def randomised(self):
        return len(self.shapes) > 1 or any(self._ranged(k) for k in ("psf_fwhm", "psf_beta", "psf_radius", "noise"))


class _Psfs:
    """The distinct PSFs used so far: kernels, their parameters and measured FWHM."""

    def __init__(self, config):
        self.config = config
        self.index = {}
        self.kernels, self.params, self.fwhm = [], [], []

    def get(self, params, image_pixscale=None):
        """``(index, kernel, fwhm)`` for PSF parameters (built once, then reused)."""
        c = self.config
        if params["shape"] == "file":
            psf = PSF(shape="file", path=str(c.psf_file), pixscale=c.psf_pixscale, image_pixscale=image_pixscale)
        else:
            psf = PSF(shape=params["shape"], fwhm=params["fwhm"], beta=params["beta"],
                      radius=params.get("radius"), size=c.psf_size)
        key = json.dumps(psf.to_dict(), sort_keys=True)
        if key not in self.index:
            kernel = psf.kernel()
            fwhm = psf.fwhm_px(kernel)
            self.index[key] = len(self.kernels)
            self.kernels.append(kernel)
            self.params.append(psf.to_dict())
            self.fwhm.append(float(fwhm))
        i = self.index[key]
        return i, self.kernels[i], self.fwhm[i]

    def stack(self):
        """All kernels padded to one odd size, float32."""
        k = max(max(kern.shape) for kern in self.kernels)
        out = np.zeros((len(self.kernels), k, k), dtype=np.float32)
        for i, kern in enumerate(self.kernels):
            py, px = (k - kern.shape[0]) // 2, (k - kern.shape[1]) // 2
            out[i, py : py + kern.shape[0], px : px + kern.shape[1]] = kern
        return out


def _image_pixscale(image, config):
    if config.psf_pixscale is None:
        return None
    if config.image_pixscale is not None:
        return config.image_pixscale
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():  # astropy's notes on fixing old headers are not the user's concern here
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(image.header).celestial
        if wcs.naxis == 2:
            return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
    except Exception:  # a broken WCS is the same as none for this purpose
        pass
    raise InputError(f"{image.path}: no celestial WCS to resample the PSF to; give --image-pixscale")


def _tile_degrade(ori, origins, config, psfs, rng, bg, pixscale, poisson):
    """Per-tile randomisation: each tile's BLU from its own PSF and noise draw, by :func:`degrade` on its window.

    ``bg`` is ORI's ``(median, std)``: the noise scales with the image's
    background std and the Poisson term counts signal above its sky level.
    """
    bg_median, bg_std = bg
    tile, s = config.tile, config.scale
    drawn = [config.draw(rng) for _ in origins]
    built = [psfs.get(params, pixscale) for params, _ in drawn]
    r = max(k.shape[0] for _, k, _ in built) // 2
    padded = np.pad(np.nan_to_num(ori, nan=0.0), r, mode="edge")
    blu = np.empty((len(origins), tile // s, tile // s))
    rows = []
    for n, ((y, x), (index, kernel, fwhm), (_, factor)) in enumerate(zip(origins, built, drawn)):
        h = kernel.shape[0] // 2
        window = padded[y + r - h : y + r + tile + h, x + r - h : x + r + tile + h]
        blu[n] = degrade(window, kernel, noise_std=factor * bg_std, rng=rng, poisson_gain=poisson,
                         background=bg_median, scale=s, margin=True)
        rows.append((index, fwhm, factor * bg_std))
    return blu, rows


def _one_image(i, path, field, sha256, config, psfs):
    """Degrade and tile one image: returns (image_row, blu_tiles, ori_tiles, tile_rows)."""
    image = read_image(path, hdu=config.hdu, plane=config.plane, min_size=config.tile)
    sim_seed = image.header.get("SIMSEED")
    if field == TRAIN_FIELD and isinstance(sim_seed, int) and sim_seed >= 1000:
        raise InputError(f"{path}: simulated with seed {sim_seed}; seeds >= 1000 are the simulated test field "
                         "and never go into training (CONTRACTS.md 5)")
    ori = image.data
    lo, hi = percentile_limits(ori)
    if not hi > lo:
        raise InputError(f"{path}: 0.5th and 99.9th percentiles are equal ({lo:g}): no dynamic range to normalise")
    bg_mean, bg_median, bg_std = background_stats(ori)
    origins = nan_free(ori, grid_origins(ori.shape, config.tile, config.stride), config.tile)
    if not origins:
        raise InputError(f"{path}: no {config.tile}x{config.tile} tile without NaN pixels")
    pixscale = _image_pixscale(image, config) if "file" in config.shapes else None
    train = field == TRAIN_FIELD
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(i,)) if train else 0)
    poisson = config.poisson_gain if train else None
    s, t = config.scale, config.tile
    if train and config.randomise == "tile" and config.randomised:
        blu_tiles, rows = _tile_degrade(ori, origins, config, psfs, rng, (bg_median, bg_std), pixscale, poisson)
        blu_stats_from = blu_tiles
    else:
        params, factor = config.draw(rng) if train else config.nominal()
        index, kernel, fwhm = psfs.get(params, pixscale)
        blu = degrade(ori, kernel, noise_std=factor * bg_std, rng=rng, poisson_gain=poisson,
                      background=bg_median, scale=s)
        blu_tiles = extract_tiles(blu, [(y // s, x // s) for y, x in origins], t // s)
        rows = [(index, fwhm, factor * bg_std)] * len(origins)
        blu_stats_from = blu
    blu_lo, blu_hi = percentile_limits(blu_stats_from)
    blu_bg_std = background_stats(blu_stats_from)[2]
    span = hi - lo
    ori_tiles = ((extract_tiles(ori, origins, t) - lo) / span).astype(np.float32)
    blu_tiles = ((blu_tiles - lo) / span).astype(np.float32)
    tile_rows = [(i, y, x, field, p, f, n) for (y, x), (p, f, n) in zip(origins, rows)]
    image_row = (str(Path(path).resolve()), sha256, field, ori.shape[0], ori.shape[1], lo, hi,
                 blu_lo, blu_hi, bg_mean, bg_median, bg_std, blu_bg_std, image.hdu,
                 -1 if image.plane is None else image.plane)
    return image_row, blu_tiles, ori_tiles, tile_rows


@contextmanager
def _sigterm_as_interrupt():
    """A plain ``kill`` unwinds like Ctrl-C, so the temporary output is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = _signal.signal(_signal.SIGTERM, handler)
    try:
        yield
    finally:
        _signal.signal(_signal.SIGTERM, previous)


def _normalise_sources(sources):
    """``[(path, field, sha256)]``; refuses duplicates and a test image also listed for training."""
    out, seen, fields = [], set(), {}
    for item in sources:
        path, field = (item, TRAIN_FIELD) if isinstance(item, (str, Path)) else item
        path, field = Path(path), str(field)
        if not field or len(field.encode()) > 16:
            raise ConfigError(f"{path}: field name must be 1-16 characters, got {field!r}")
        if path.resolve() in seen:
            raise InputError(f"{path}: listed twice")
        seen.add(path.resolve())
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        digest = sha256_file(path)
        other = fields.setdefault(digest, (path, field))
        if (other[1] == TRAIN_FIELD) != (field == TRAIN_FIELD):
            raise InputError(f"{path}: same bytes as {other[0]}, which is in field {other[1]!r}; "
                             "a test image must never be trained on")
        out.append((path, field, digest))
    if not out:
        raise InputError("no input images given")
    return out


def prepare_pairs(sources, out, *, config=None, overwrite=False, progress=None):
    """Write the pairs file for ``sources``.

    Parameters
    ----------
    sources : list of (path, field)
        Images and their fields (``train``, ``val``, ``other_sky``, ...); a bare
        path means field ``train``.
    out : str or Path
        Output HDF5 file, written atomically.
    config : PrepareConfig, optional
        Default: bench-v1's degradation.
    overwrite : bool
        Replace an existing ``out``.
    progress : callable, optional
        ``progress('images', done, total)`` after each image (:mod:`astrosr.progress`);
        a bool (the former show-a-bar flag) is accepted and ignored.

    Returns
    -------
    dict
        ``{'path', 'n_tiles', 'n_images', 'tiles_per_field'}``.

    Raises
    ------
    InputError
        A bad input image (named), or ``out`` exists without ``overwrite``.
    """
    config = config or PrepareConfig()
    progress = progress if callable(progress) else None
    sources = _normalise_sources(sources)
    check_not_input(out, [path for path, _, _ in sources] + ([config.psf_file] if config.psf_file else []))
    psfs = _Psfs(config)
    counts = {}
    with _sigterm_as_interrupt(), PairsWriter(out, tile=config.tile, scale=config.scale, compression=config.compression,
                                              overwrite=overwrite) as writer:
        report(progress, "images", 0, len(sources))
        for i, (path, field, digest) in enumerate(sources):
            n = writer.append(*_one_image(i, path, field, digest, config, psfs))
            counts[field] = counts.get(field, 0) + n
            report(progress, "images", i + 1, len(sources))
        writer.finish(psfs.stack(), psfs.params, psfs.fwhm, config=to_dict(config))
    return {"path": Path(out), "n_tiles": sum(counts.values()), "n_images": len(writer.images), "tiles_per_field": counts}
