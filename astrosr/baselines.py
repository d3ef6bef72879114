"""Classical baselines of bench-v1: Richardson-Lucy and Wiener with the true PSF, and BM3D where installed.

BM3D deblurring (the ``bm3d`` package, behind the optional ``peers`` extra:
its licence allows non-commercial use only, so it is never a core
dependency) is the strongest classical peer: its noise multiplier is chosen
on val like RL's iterations, and its restorations are cached per image and
settings (it costs about a minute per megapixel). The three are kept together in one module:
each is a classical peer called the same way (BLU and the true PSF in, a restoration out) whose
one parameter is chosen on val by the same rule.

bench-v1 (``benchmarks/README.md``, section Report rows and baselines) fixes
both calls (skimage, ``clip=False``; RL on ``BLU - min(BLU)`` because it needs
non-negative input) and how their one parameter each is chosen: the best mean
SSIM on the val field from a fixed grid, chosen once and used on every field.
The choice is cached in the evaluate output directory, keyed by the manifest,
the PSF and the val files.

Examples
--------
>>> import numpy as np
>>> from astrosr.baselines import richardson_lucy, wiener
>>> from astrosr.psf import moffat_psf
>>> psf = moffat_psf(4.0, beta=3.0, size=9)
>>> blu = np.random.default_rng(0).normal(10.0, 1.0, (32, 32))
>>> richardson_lucy(blu, psf, n=5).shape, wiener(blu, psf, balance=0.1).shape
((32, 32), (32, 32))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import convolve
from skimage import restoration

from .errors import ConfigError
from .files import atomic_path

__all__ = [
    "RL_ITERS",
    "WIENER_BALANCES",
    "DEFAULT_RL_ITERS",
    "DEFAULT_WIENER_BALANCE",
    "richardson_lucy",
    "richardson_lucy_sweep",
    "wiener",
    "BM3D_MULTIPLIERS",
    "bm3d_available",
    "bm3d_deblur",
    "cached_bm3d",
    "choose_parameters",
    "cached_choice",
    "default_choice",
]

RL_ITERS = (5, 10, 20, 30, 50)
WIENER_BALANCES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_RL_ITERS = 20
DEFAULT_WIENER_BALANCE = 0.1
#: BM3D's noise std is the true one times one of these (chosen on val)
BM3D_MULTIPLIERS = (0.5, 0.7, 1.0, 1.4, 2.0)
DEFAULT_BM3D_MULTIPLIER = 1.0
#: what a report says when the BM3D row is missing
BM3D_MISSING = ("BM3D skipped: the bm3d package is not installed (pip install 'astrosr-restore[peers]'; "
                "its licence allows non-commercial use only)")
CACHE_NAME = "baselines_choice.json"


def richardson_lucy(blu: np.ndarray, psf: np.ndarray, *, n: int = DEFAULT_RL_ITERS) -> np.ndarray:
    """bench-v1 RL: ``richardson_lucy(BLU - min(BLU), PSF, num_iter=n, clip=False) + min(BLU)``.

    Parameters
    ----------
    blu : ndarray
        The blurred image, linear units (any sign: it is shifted to be
        non-negative, as RL requires, and shifted back).
    psf : ndarray
        The true PSF kernel, unit sum.
    n : int
        Iterations (bench-v1 chooses it on val; 20 by default).

    Returns
    -------
    ndarray
        The restoration, in BLU's units.

    Raises
    ------
    ConfigError
        ``n`` is not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import moffat_psf
    >>> blu = np.random.default_rng(0).normal(10.0, 1.0, (32, 32))
    >>> richardson_lucy(blu, moffat_psf(4.0, size=9), n=5).shape
    (32, 32)
    """
    if int(n) != n or n < 1:
        raise ConfigError(f"Richardson-Lucy iterations must be a positive integer, got {n}")
    low = np.nanmin(blu)
    return restoration.richardson_lucy(blu - low, psf, num_iter=int(n), clip=False) + low


def richardson_lucy_sweep(blu: np.ndarray, psf: np.ndarray, iters: Sequence[int] = RL_ITERS) -> dict[int, np.ndarray]:
    """bench-v1 RL after each of ``iters`` iterations, from one run of ``max(iters)``.

    The loop is skimage 0.26's ``richardson_lucy`` (float64, ``filter_epsilon``
    None, ``clip=False``) step for step, so each snapshot equals
    :func:`richardson_lucy` with that ``n`` exactly (tested); the parameter
    search then costs 50 iterations instead of 115.

    Parameters
    ----------
    blu : ndarray
        The blurred image, linear units.
    psf : ndarray
        The true PSF kernel, unit sum.
    iters : sequence of int
        Iteration counts to keep (bench-v1's grid by default).

    Returns
    -------
    dict of int -> ndarray
        The restoration after each count in ``iters``.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import moffat_psf
    >>> psf = moffat_psf(4.0, size=9)
    >>> blu = np.random.default_rng(0).normal(10.0, 1.0, (32, 32))
    >>> snapshots = richardson_lucy_sweep(blu, psf, (5, 10))
    >>> sorted(snapshots), bool(np.allclose(snapshots[5], richardson_lucy(blu, psf, n=5)))
    ([5, 10], True)
    """
    iters = sorted({int(n) for n in iters})
    if not iters or iters[0] < 1:
        raise ConfigError(f"Richardson-Lucy iterations must be positive integers, got {iters}")
    low = np.nanmin(blu)
    image = np.asarray(blu - low, dtype=np.float64)
    psf = np.asarray(psf, dtype=np.float64)
    psf_mirror = np.flip(psf)
    estimate = np.full(image.shape, 0.5)
    out = {}
    for step in range(1, iters[-1] + 1):
        conv = convolve(estimate, psf, mode="same") + 1e-12
        estimate *= convolve(image / conv, psf_mirror, mode="same")
        if step in iters:
            out[step] = estimate + low
    return out


def wiener(blu: np.ndarray, psf: np.ndarray, *, balance: float = DEFAULT_WIENER_BALANCE) -> np.ndarray:
    """bench-v1 Wiener: ``skimage.restoration.wiener(BLU, PSF, balance=b, clip=False)``.

    Parameters
    ----------
    blu : ndarray
        The blurred image, linear units.
    psf : ndarray
        The true PSF kernel, unit sum.
    balance : float
        Regularisation, > 0 (bench-v1 chooses it on val; 0.1 by default).

    Returns
    -------
    ndarray
        The restoration, in BLU's units.

    Raises
    ------
    ConfigError
        ``balance`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.psf import moffat_psf
    >>> blu = np.random.default_rng(0).normal(10.0, 1.0, (32, 32))
    >>> wiener(blu, moffat_psf(4.0, size=9), balance=0.1).shape
    (32, 32)
    """
    if not balance > 0:
        raise ConfigError(f"Wiener balance must be > 0, got {balance}")
    return restoration.wiener(blu, psf, balance=float(balance), clip=False)


def default_choice(reason: str) -> dict[str, Any]:
    """The fallback parameters (n = 20, b = 0.1), with why they were not chosen on val.

    Used when a run has no val images to choose on (arbitrary images, no
    manifest); the report prints ``reason``.

    Parameters
    ----------
    reason : str
        Why the val field could not be used.

    Returns
    -------
    dict
        The same keys as :func:`choose_parameters`, ``source`` ``'default'``
        and empty SSIM tables.

    Examples
    --------
    >>> choice = default_choice("images given: no val field")
    >>> choice["rl_iters"], choice["wiener_balance"], choice["source"]
    (20, 0.1, 'default')
    """
    return {
        "rl_iters": DEFAULT_RL_ITERS,
        "wiener_balance": DEFAULT_WIENER_BALANCE,
        "bm3d_multiplier": DEFAULT_BM3D_MULTIPLIER if bm3d_available() else None,
        "source": "default",
        "note": reason,
        "rl_ssim": {},
        "wiener_ssim": {},
        "bm3d_ssim": {},
    }


def bm3d_available() -> bool:
    """Whether the optional ``bm3d`` package imports.

    Examples
    --------
    >>> isinstance(bm3d_available(), bool)
    True
    """
    try:
        import bm3d  # noqa: F401
    except Exception:  # ImportError, or a broken install of it or of bm4d
        return False
    return True


def bm3d_deblur(blu: np.ndarray, psf: np.ndarray, *, noise_std: float,
                multiplier: float = DEFAULT_BM3D_MULTIPLIER) -> np.ndarray:
    """BM3D deblurring as the benchmark runs it: ``bm3d.bm3d_deblurring`` with the true PSF and noise std.

    The image is scaled by its own 0.5/99.9 percentiles to order 1 and
    reflect-padded by the PSF's half-width (the method's inverse filter is
    circular), restored with noise std ``multiplier x noise_std`` (in those
    units), cropped and scaled back.

    Parameters
    ----------
    blu : ndarray (H, W)
    psf : ndarray
        The true PSF (unit sum, odd sides).
    noise_std : float
        BLU's noise std, physical units.
    multiplier : float

    Returns
    -------
    ndarray (H, W), float64
    """
    import bm3d

    if not hasattr(np, "trapz"):  # bm4d 4.2 calls np.trapz, which numpy 2.x renamed
        np.trapz = np.trapezoid
    from .degrade import percentile_limits

    lo, hi = percentile_limits(blu)
    span = hi - lo
    pad = psf.shape[0] // 2
    z = np.pad((np.asarray(blu, dtype=np.float64) - lo) / span, pad, mode="reflect")
    # one channel, explicitly: given a 2-D image, bm3d 4.0.3 builds its noise PSD as (1, H, W) against the
    # image's (H, W, 1) and broadcasts every product to H x W x W
    out = np.asarray(bm3d.bm3d_deblurring(z[:, :, None], multiplier * noise_std / span, psf), dtype=np.float64)
    out = out.reshape(z.shape)
    return out[pad:-pad, pad:-pad] * span + lo if pad else out * span + lo


def cached_bm3d(cache_dir: str | Path | None, blu: np.ndarray, psf: np.ndarray, *, noise_std: float,
                multiplier: float) -> tuple[np.ndarray, float]:
    """``(restoration, seconds)`` of :func:`bm3d_deblur`, from ``cache_dir`` when it was computed before.

    The key is the image's and the kernel's bytes, the noise std and the
    multiplier; ``seconds`` is the time the computation took (also on a
    cache hit, so s/Mpix stays the method's cost). None: no cache.
    """
    import time

    key = hashlib.sha256()
    for part in (np.ascontiguousarray(blu, dtype=np.float64), np.ascontiguousarray(psf, dtype=np.float64)):
        key.update(part.tobytes())
        key.update(str(part.shape).encode())
    key.update(f"{noise_std!r} {multiplier!r} bm3d".encode())
    name = key.hexdigest()[:24]
    if cache_dir is not None:
        path = Path(cache_dir) / f"{name}.npy"
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file():
            try:
                return np.load(path), float(json.loads(meta.read_text())["seconds"])
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is recomputed
    t0 = time.perf_counter()
    out = bm3d_deblur(blu, psf, noise_std=noise_std, multiplier=multiplier)
    seconds = time.perf_counter() - t0
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(path, overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, out)
        with atomic_path(meta, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"seconds": seconds, "noise_std": noise_std, "multiplier": multiplier}))
    return out, seconds


def choose_parameters(
    pairs: Sequence[tuple[Any, np.ndarray]],
    psf: np.ndarray,
    *,
    iters: Sequence[int] = RL_ITERS,
    balances: Sequence[float] = WIENER_BALANCES,
    progress: Callable[[], None] | None = None,
    bm3d: bool = False,
    multipliers: Sequence[float] = BM3D_MULTIPLIERS,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Choose RL iterations, Wiener balance and (with ``bm3d``) BM3D's noise multiplier by mean val SSIM.

    bench-v1's rule (``benchmarks/README.md``, section Report rows and
    baselines): each parameter is the grid value with the highest mean SSIM
    over all the val field's tiles, ties going to the first grid value.

    Parameters
    ----------
    pairs : list of (Reference, ndarray)
        Each val image's :func:`astrosr.metrics.reference` and its BLU.
    psf : ndarray
        The true PSF kernel.
    iters, balances : sequences
        The grids (bench-v1's by default).
    progress : callable, optional
        Called once per image done.
    bm3d : bool
        Also choose BM3D's multiplier (needs the ``bm3d`` package); the
        noise std of each val image is its reference's background std (the
        bench-v1 degradation's).
    multipliers : sequence of float
    cache_dir : str or Path, optional
        Where BM3D restorations are cached (:func:`cached_bm3d`).

    Returns
    -------
    dict
        ``rl_iters``, ``wiener_balance``, ``bm3d_multiplier`` (None without
        ``bm3d``), ``source`` ('val'), and the mean SSIM of every grid value
        (``rl_ssim``, ``wiener_ssim``, ``bm3d_ssim``, keyed by str).

    Raises
    ------
    ConfigError
        ``pairs`` is empty.

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.degrade import bench_v1_degrade
    >>> from astrosr.metrics import reference
    >>> from astrosr.psf import moffat_psf
    >>> psf = moffat_psf(4.0, size=9)
    >>> ori = np.random.default_rng(1).normal(100.0, 5.0, (128, 128))
    >>> blu, _ = bench_v1_degrade(ori, psf)
    >>> choice = choose_parameters([(reference(ori), blu)], psf, iters=(5, 10), balances=(0.1, 1.0))
    >>> choice["source"], sorted(choice["rl_ssim"])
    ('val', ['10', '5'])
    """
    from .metrics import normalise, tile_metrics
    from .tiling import extract_tiles

    if not pairs:
        raise ConfigError("choosing RL/Wiener parameters needs at least one val image")

    def tile_ssim(ref, image):
        tiles = extract_tiles(normalise(image, ref.lo, ref.hi), ref.origins, ref.tile)
        return tile_metrics(tiles, ref.ori_tiles)[0]

    rl = {n: [] for n in iters}
    wi = {b: [] for b in balances}
    bm = {m: [] for m in (multipliers if bm3d else ())}
    for ref, blu in pairs:
        for n, image in richardson_lucy_sweep(blu, psf, iters).items():
            rl[n].append(tile_ssim(ref, image))
        for b in balances:
            wi[b].append(tile_ssim(ref, wiener(blu, psf, balance=b)))
        for m in bm:
            bm[m].append(tile_ssim(ref, cached_bm3d(cache_dir, blu, psf, noise_std=ref.std, multiplier=m)[0]))
        if progress is not None:
            progress()
    rl_mean = {n: float(np.concatenate(v).mean()) for n, v in rl.items()}
    wi_mean = {b: float(np.concatenate(v).mean()) for b, v in wi.items()}
    bm_mean = {m: float(np.concatenate(v).mean()) for m, v in bm.items()}
    # ties go to the first grid value (fewest iterations, least regularisation)
    return {
        "rl_iters": int(max(iters, key=lambda n: rl_mean[n])),
        "wiener_balance": float(max(balances, key=lambda b: wi_mean[b])),
        "bm3d_multiplier": float(max(bm, key=lambda m: bm_mean[m])) if bm else None,
        "source": "val",
        "note": "chosen by mean SSIM on the val field",
        "rl_ssim": {str(n): v for n, v in rl_mean.items()},
        "wiener_ssim": {f"{b:g}": v for b, v in wi_mean.items()},
        "bm3d_ssim": {f"{m:g}": v for m, v in bm_mean.items()},
    }


def _key_id(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cached_choice(
    out_dir: str | Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """Return the cached choice for ``key`` in ``out_dir``, or ``compute()`` it and cache it.

    Parameters
    ----------
    out_dir : str or Path
        The evaluate output directory (cache file ``baselines_choice.json``).
    key : dict
        JSON-able identity of the choice: manifest, PSF, val files.
    compute : callable
        Returns the choice dict when nothing is cached for ``key``.

    Returns
    -------
    (dict, bool)
        The choice and whether it came from the cache.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> cached_choice(out, {"psf": "moffat"}, lambda: default_choice("example"))[1]
    False
    >>> cached_choice(out, {"psf": "moffat"}, lambda: default_choice("example"))[1]
    True
    """
    path = Path(out_dir) / CACHE_NAME
    entries = {}
    if path.is_file():
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}  # a damaged cache is only a lost shortcut
    kid = _key_id(key)
    if kid in entries and entries[kid].get("key") == key:
        return entries[kid]["choice"], True
    choice = compute()
    entries[kid] = {"key": key, "choice": choice}
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(entries, indent=2, sort_keys=True))
    return choice, False
