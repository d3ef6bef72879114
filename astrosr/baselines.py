"""Classical baselines of bench-v1: Richardson-Lucy and Wiener with the true PSF.

``../shared/BENCHMARK.md`` section 6 fixes both calls (skimage, ``clip=False``;
RL on ``BLU - min(BLU)`` because it needs non-negative input) and how their
one parameter each is chosen: the best mean SSIM on the val field from a fixed
grid, chosen once and used on every field. The choice is cached in the
evaluate output directory, keyed by the manifest, the PSF and the val files.
"""

import hashlib
import json
from pathlib import Path

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
    "choose_parameters",
    "cached_choice",
    "default_choice",
]

RL_ITERS = (5, 10, 20, 30, 50)
WIENER_BALANCES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_RL_ITERS = 20
DEFAULT_WIENER_BALANCE = 0.1
CACHE_NAME = "baselines_choice.json"


def richardson_lucy(blu, psf, *, n=DEFAULT_RL_ITERS):
    """bench-v1 RL: ``richardson_lucy(BLU - min(BLU), PSF, num_iter=n, clip=False) + min(BLU)``."""
    if int(n) != n or n < 1:
        raise ConfigError(f"Richardson-Lucy iterations must be a positive integer, got {n}")
    low = np.nanmin(blu)
    return restoration.richardson_lucy(blu - low, psf, num_iter=int(n), clip=False) + low


def richardson_lucy_sweep(blu, psf, iters=RL_ITERS):
    """bench-v1 RL after each of ``iters`` iterations, from one run of ``max(iters)``.

    The loop is skimage 0.26's ``richardson_lucy`` (float64, ``filter_epsilon``
    None, ``clip=False``) step for step, so each snapshot equals
    :func:`richardson_lucy` with that ``n`` exactly (tested); the parameter
    search then costs 50 iterations instead of 115.

    Returns
    -------
    dict of int -> ndarray
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


def wiener(blu, psf, *, balance=DEFAULT_WIENER_BALANCE):
    """bench-v1 Wiener: ``skimage.restoration.wiener(BLU, PSF, balance=b, clip=False)``."""
    if not balance > 0:
        raise ConfigError(f"Wiener balance must be > 0, got {balance}")
    return restoration.wiener(blu, psf, balance=float(balance), clip=False)


def default_choice(reason):
    """The reference run's parameters (n = 20, b = 0.1), with why they were not chosen on val."""
    return {
        "rl_iters": DEFAULT_RL_ITERS,
        "wiener_balance": DEFAULT_WIENER_BALANCE,
        "source": "default",
        "note": reason,
        "rl_ssim": {},
        "wiener_ssim": {},
    }


def choose_parameters(pairs, psf, *, iters=RL_ITERS, balances=WIENER_BALANCES, progress=None):
    """Choose RL iterations and Wiener balance by mean val SSIM (BENCHMARK.md 6).

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

    Returns
    -------
    dict
        ``rl_iters``, ``wiener_balance``, ``source`` ('val'), and the mean
        SSIM of every grid value (``rl_ssim``, ``wiener_ssim``, keyed by str).
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
    for ref, blu in pairs:
        for n, image in richardson_lucy_sweep(blu, psf, iters).items():
            rl[n].append(tile_ssim(ref, image))
        for b in balances:
            wi[b].append(tile_ssim(ref, wiener(blu, psf, balance=b)))
        if progress is not None:
            progress()
    rl_mean = {n: float(np.concatenate(v).mean()) for n, v in rl.items()}
    wi_mean = {b: float(np.concatenate(v).mean()) for b, v in wi.items()}
    # ties go to the first grid value (fewest iterations, least regularisation)
    return {
        "rl_iters": int(max(iters, key=lambda n: rl_mean[n])),
        "wiener_balance": float(max(balances, key=lambda b: wi_mean[b])),
        "source": "val",
        "note": "chosen by mean SSIM on the val field",
        "rl_ssim": {str(n): v for n, v in rl_mean.items()},
        "wiener_ssim": {f"{b:g}": v for b, v in wi_mean.items()},
    }


def _key_id(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cached_choice(out_dir, key, compute):
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
