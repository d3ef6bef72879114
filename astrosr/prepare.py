"""FITS images -> one HDF5 file of blurred/original tile pairs (the pairs file).

Each image is read (:mod:`astrosr.fits_io`), degraded whole (:mod:`astrosr.degrade`:
PSF convolution with extended edges, Gaussian noise at a multiple of ORI's
sigma-clipped background std, optional Poisson term, optional block averaging
by ``scale``), cut on bench-v1's grid (:mod:`astrosr.tiling`; tiles with NaN in
ORI skipped), normalised with ORI's 0.5/99.9 percentiles *without* the clip,
and appended to the file through :class:`astrosr.pairs.PairsWriter` (the
file's layout is documented in :mod:`astrosr.pairs`).

Noise and randomisation: images of a test field (anything
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

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import check_options, option, to_dict
from .degrade import background_stats, degrade, percentile_limits
from .psf import BENCH_V1_PSF, PSF, matching_kernel, measure_fwhm, moffat_psf, parse_range
from .errors import ConfigError, InputError
from .files import check_not_input, sha256_file, sigterm_as_interrupt
from .pairs import COMPRESSION, PairsWriter
from .progress import report
from .tiling import extract_tiles, grid_origins, nan_free

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable

    from .progress import ProgressCallback

__all__ = ["PrepareOptions", "prepare_pairs", "TRAIN_FIELD"]

TRAIN_FIELD = "train"
#: the noise multiple a test field takes where a training range was given (bench-v1's)
BENCH_NOISE = 1.0
#: with declared_psf, a drawn PSF is at least this many times the declared one (the kernel between them is real)
DECLARED_MARGIN = 1.15


def _declared(header) -> tuple[float, float] | None:
    """The PSF an image's header declares (``PSFFWHM``, ``PSFBETA``, 3 when absent), or None."""
    try:
        fwhm = float(header["PSFFWHM"])
        beta = float(header.get("PSFBETA", 3.0))
    except (KeyError, TypeError, ValueError):
        return None
    return (fwhm, beta) if fwhm > 0 and beta > 1 else None


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides a pairs file: the library argument, the pipeline's ``prepare:`` keys and the CLI flags.

    Recorded in the pairs file's ``config`` attribute.

    Parameters
    ----------
    psf : PSF
        The degradation PSF. For train images it may be a distribution: a
        comma list of shapes (``'moffat,gaussian'``) and ranges ``'lo:hi'``
        of FWHM, beta or radius, drawn per image or tile; test fields take
        :meth:`PSF.nominal` (bench-v1's Moffat FWHM 4, beta 3 where a range
        was given).
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
        HDU index or EXTNAME of every image (default: the first 2-D image).
    plane : int or None
        Plane of a 3-D cube.
    compression : {'lzf', 'gzip', 'none'}
        HDF5 compression of the tiles.
    declared_psf : bool
        Train images whose header declares their own PSF (``PSFFWHM``,
        ``PSFBETA``: astrosr simulate writes them) become targets at that
        PSF: each drawn PSF becomes a Moffat of the image's beta (at least
        1.15 x the declared FWHM) and the tile's kernel is the one that takes
        the declared PSF to it (:func:`astrosr.psf.matching_kernel`), so a
        model learns to deblur to a declared output PSF, as ``astrosr
        deblur`` asks of it. Other images, and the val fields, as before.
    declared_kernel : float or str or None
        With ``declared_psf``: ``'lo:hi'`` draws those images' kernel FWHM instead of their PSF (a Moffat of FWHM
        ``hypot(declared, kernel)``), so fields of one regime (crowded stars at the small kernels real seeing
        leaves after a 2 px output PSF) need not teach every kernel ``psf`` spans.

    Examples
    --------
    >>> from astrosr.prepare import PrepareOptions
    >>> from astrosr.psf import PSF
    >>> PrepareOptions(psf=PSF(shape="moffat,gaussian", fwhm="2.5:5.5"), randomise="tile").randomised
    True
    """

    psf: PSF = option(BENCH_V1_PSF, ranges=True, help="The degradation PSF (ranges and shape lists draw per image/tile).")
    randomise: str = option("image", choices=("image", "tile"), help="Draw ranges per image or per tile [image].")
    noise: float | str = option(1.0, help="Noise std / ORI's background std, or a range lo:hi [1].")
    poisson_gain: float | None = option(None, help="Add Poisson noise at this gain (e-/ADU) to train images.")
    scale: int = option(1, minimum=1, help="Block-average BLU by S (S-times super-resolution) [1].")
    seed: int = option(0, minimum=0, help="Seed of the train images' noise and PSF draws "
                                          "(image i: SeedSequence(seed, spawn_key=(i,))) [0].")
    tile: int = option(128, minimum=8, help="Tile side [128].")
    stride: int | None = option(None, minimum=1, help="Grid step [tile].")
    hdu: int | str | None = option(None, help="HDU index or EXTNAME [first 2-D image].")
    plane: int | None = option(None, minimum=0, help="Plane of a 3-D cube.")
    compression: str = option("lzf", choices=tuple(COMPRESSION), help="HDF5 compression [lzf].")
    declared_psf: bool = option(False, help="Train images with PSFFWHM/PSFBETA cards are targets at that PSF: "
                                            "their kernels match it to the drawn PSF.")
    declared_kernel: float | str | None = option(None, help="With declared_psf: draw their kernel FWHM in lo:hi instead.")

    def __post_init__(self):
        check_options(self)
        if isinstance(self.noise, str):  # '1.5' from a command line is the number 1.5
            try:
                object.__setattr__(self, "noise", float(self.noise))
            except ValueError:
                pass
        parse_range(self.noise, "noise")
        if parse_range(self.declared_kernel, "declared_kernel") and not self.declared_psf:
            raise ConfigError(f"declared_kernel: needs declared_psf, got declared_kernel={self.declared_kernel!r} alone")
        stride = self.stride or self.tile
        if self.tile % self.scale or stride % self.scale:
            raise ConfigError(f"scale: tile ({self.tile}) and stride ({stride}) must be multiples of scale "
                              f"({self.scale}) >= 1, tile >= 8")
        if self.poisson_gain is not None and not self.poisson_gain > 0:
            raise ConfigError(f"poisson_gain: must be > 0, got {self.poisson_gain}")

    def noise_factor(self, rng: np.random.Generator | None) -> float:
        """The noise multiple of one train image or tile (``rng``), or of a test field (None: bench-v1's 1 for a range)."""
        lo, hi = parse_range(self.noise, "noise")
        if lo == hi:
            return lo
        return float(rng.uniform(lo, hi)) if rng is not None else BENCH_NOISE

    def draw_psf(self, rng: np.random.Generator, declared: tuple[float, float] | None = None) -> PSF:
        """One train image's or tile's PSF; for a declared image with ``declared_kernel``, from a drawn kernel FWHM."""
        if declared is None or self.declared_kernel is None:
            return self.psf.draw(rng)
        lo, hi = parse_range(self.declared_kernel, "declared_kernel")
        return PSF(fwhm=round(float(np.hypot(declared[0], rng.uniform(lo, hi))), 4), beta=declared[1])

    @property
    def randomised(self) -> bool:
        """True when train images draw their PSF or noise (a distribution, not one value)."""
        lo, hi = parse_range(self.noise, "noise")
        return self.psf.ranged or lo != hi


class _Psfs:
    """The distinct PSFs used so far: kernels, their parameters and measured FWHM."""

    def __init__(self, config):
        self.config = config
        self.index = {}
        self.kernels, self.params, self.fwhm = [], [], []

    def get(self, psf, image_pixscale=None, declared=None):
        """``(index, kernel, fwhm)`` of one drawn PSF (built once, then reused); a file PSF at the image's scale.

        ``declared`` ``(fwhm, beta)``: the image's own PSF; the kernel takes it to the drawn PSF (a Moffat of that
        beta, at least :data:`DECLARED_MARGIN` times as wide).
        """
        if psf.shape == "file":
            psf = dataclasses.replace(psf, image_pixscale=image_pixscale)
        if declared is not None:
            wide = max(psf.fwhm_px() if psf.shape != "file" else 0.0, DECLARED_MARGIN * declared[0])
            psf = PSF(fwhm=round(float(wide), 4), beta=declared[1], size=max(psf.size, 2 * int(np.ceil(5 * wide)) + 1))
        key = json.dumps([psf.to_dict(), declared], sort_keys=True)
        if key not in self.index:
            kernel = psf.kernel()
            params = psf.to_dict()
            if declared is not None:
                kernel = matching_kernel(kernel, moffat_psf(declared[0], beta=declared[1], size=psf.size))
                fwhm = measure_fwhm(np.clip(kernel, 0.0, None))
                params.update(declared_fwhm=declared[0], declared_beta=declared[1])
            else:
                fwhm = psf.fwhm_px(kernel)
            self.index[key] = len(self.kernels)
            self.kernels.append(kernel)
            self.params.append(params)
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
    """The image's arcsec/px for resampling a PSF file that states its own scale: given, else from its WCS."""
    return config.psf.for_image(image.header, image.path).image_pixscale


def _tile_degrade(ori, origins, config, psfs, rng, bg, pixscale, poisson, declared=None):
    """Per-tile randomisation: each tile's BLU from its own PSF and noise draw, by :func:`degrade` on its window.

    ``bg`` is ORI's ``(median, std)``: the noise scales with the image's
    background std and the Poisson term counts signal above its sky level.
    """
    bg_median, bg_std = bg
    tile, s = config.tile, config.scale
    drawn = [(config.draw_psf(rng, declared), config.noise_factor(rng)) for _ in origins]
    built = [psfs.get(psf, pixscale, declared) for psf, _ in drawn]
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
    from .fits_io import read_image  # astropy on use: the CLI's -h stays fast

    image = read_image(path, hdu=config.hdu, plane=config.plane, min_size=config.tile)
    sim_seed = image.header.get("SIMSEED")
    if field == TRAIN_FIELD and isinstance(sim_seed, int) and sim_seed >= 1000:
        raise InputError(f"{path}: simulated with seed {sim_seed}; seeds >= 1000 are the simulated test field "
                         "and never go into training")
    ori = image.data
    lo, hi = percentile_limits(ori)
    if not hi > lo:
        raise InputError(f"{path}: 0.5th and 99.9th percentiles are equal ({lo:g}): no dynamic range to normalise")
    bg_mean, bg_median, bg_std = background_stats(ori)
    origins = nan_free(ori, grid_origins(ori.shape, config.tile, config.stride), config.tile)
    if not origins:
        raise InputError(f"{path}: no {config.tile}x{config.tile} tile without NaN pixels")
    pixscale = _image_pixscale(image, config) if config.psf.shape == "file" else None
    train = field == TRAIN_FIELD
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(i,)) if train else 0)
    poisson = config.poisson_gain if train else None
    s, t = config.scale, config.tile
    declared = _declared(image.header) if train and config.declared_psf else None
    if train and config.randomise == "tile" and config.randomised:
        blu_tiles, rows = _tile_degrade(ori, origins, config, psfs, rng, (bg_median, bg_std), pixscale, poisson,
                                        declared)
        blu_stats_from = blu_tiles
    else:
        psf, factor = (config.draw_psf(rng, declared), config.noise_factor(rng)) if train else (config.psf.nominal(), config.noise_factor(None))
        index, kernel, fwhm = psfs.get(psf, pixscale, declared)
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


def prepare_pairs(sources: Iterable[str | os.PathLike | tuple[str | os.PathLike, str]], out: str | os.PathLike, *,
                  config: PrepareOptions | None = None, overwrite: bool = False,
                  progress: ProgressCallback | bool = None) -> dict[str, Any]:
    """Write the pairs file for ``sources``.

    Parameters
    ----------
    sources : list of (path, field)
        Images and their fields (``train``, ``val``, ``other_sky``, ...); a bare
        path means field ``train``.
    out : str or Path
        Output HDF5 file, written atomically.
    config : PrepareOptions, optional
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

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.prepare import PrepareOptions, prepare_pairs
    >>> from astrosr.simulate import write_simulated
    >>> tmp = Path(tempfile.mkdtemp())
    >>> _ = write_simulated(tmp / "train.fits", seed=3, index=0, size=256)
    >>> _ = write_simulated(tmp / "val.fits", seed=500, index=0, size=256)
    >>> result = prepare_pairs([tmp / "train.fits", (tmp / "val.fits", "val")], tmp / "pairs.h5")
    >>> result["n_images"], result["tiles_per_field"]  # 128-px tiles, non-overlapping
    (2, {'train': 4, 'val': 4})
    >>> prepare_pairs([tmp / "train.fits"], tmp / "pairs.h5", config=PrepareOptions(stride=64),
    ...               overwrite=True)["n_tiles"]  # overlapping tiles: 3 x 3
    9
    """
    config = config or PrepareOptions()
    progress = progress if callable(progress) else None
    sources = _normalise_sources(sources)
    check_not_input(out, [path for path, _, _ in sources] + ([config.psf.path] if config.psf.path else []))
    psfs = _Psfs(config)
    counts = {}
    with sigterm_as_interrupt(), PairsWriter(out, tile=config.tile, scale=config.scale, compression=config.compression,
                                              overwrite=overwrite) as writer:
        report(progress, "images", 0, len(sources))
        for i, (path, field, digest) in enumerate(sources):
            n = writer.append(*_one_image(i, path, field, digest, config, psfs))
            counts[field] = counts.get(field, 0) + n
            report(progress, "images", i + 1, len(sources))
        writer.finish(psfs.stack(), psfs.params, psfs.fwhm, config=to_dict(config))
    return {"path": Path(out), "n_tiles": sum(counts.values()), "n_images": len(writer.images), "tiles_per_field": counts}
