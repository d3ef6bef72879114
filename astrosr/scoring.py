"""Scoring one image for bench-v1: degrade it, restore it by every method, score each against ORI.

Each image is degraded exactly as bench-v1 does (whole image, the true PSF, a
fresh ``default_rng(0)``: :func:`astrosr.degrade.bench_v1_degrade`), restored
by every method (each model through :func:`astrosr.restore.restore_image`,
with and without the data-consistency step; Richardson-Lucy; Wiener) and
scored by :mod:`astrosr.metrics` against ORI. ORI's work (tiles, source
lists) is done once per image and shared by every method.
:func:`astrosr.evaluate.evaluate` runs this over a field and
:mod:`astrosr.evaluate_report` writes the files. The protocol is bench-v1's
(``benchmarks/README.md``, section bench-v1). Degrading, restoring, timing
and scoring one image are kept together in one module: every method must
see the same BLU and be timed the same way.

Examples
--------
>>> from astrosr import baselines
>>> from astrosr.psf import moffat_psf
>>> from astrosr.scoring import score_image
>>> from astrosr.simulate import example_field
>>> path = example_field()
>>> choice = dict(baselines.default_choice("example: no val images"), bm3d_multiplier=None)  # no BM3D row
>>> result = score_image(path, "val", moffat_psf(4.0, size=9), [], 4.0, choice, True, "cpu", 1)
>>> list(result.scores)
['BLU', 'RL n=20', 'Wiener b=0.1']
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import baselines, metrics
from .degrade import bench_v1_degrade
from .errors import AstrosrError, ConfigError, InputError
from .stars import resolution_stars, star_fwhm
from .fits_io import read_image, strip_fits_suffix
from .tiling import extract_tiles
from .uncertainty import pixel_errors

if TYPE_CHECKING:  # annotations only: torch is imported where a model runs, not when this module loads
    import torch

    from .manifest import Manifest
    from .psf import PSF

__all__ = ["ImageResult", "SAMPLE_SEED", "method_names", "degraded", "baseline_choice", "warm_up",
           "score_image", "load_models"]

#: BM3D restorations are cached in this folder of the evaluate output (a minute per megapixel each)
BM3D_CACHE = "bm3d_cache"

#: torch seed of the posterior draws, set afresh for every model on every image
SAMPLE_SEED = 0


@dataclass
class ImageResult:
    """Everything scored on one image.

    Attributes
    ----------
    name, path, field, sha256 : str
    shape : tuple of int
    ref : astrosr.metrics.Reference
        ORI's reference (normalisation, tiles, source lists).
    scores : dict of str -> astrosr.metrics.ImageScore
        Per method, in report order.
    seconds : dict of str -> float or None
        Wall-clock seconds each method took on this image (None for BLU).
    panels : dict
        ``{"origins": [...], "tiles": {panel name: (n, tile, tile) array}}``
        normalised crops for the figure.
    calibration : dict of str -> astrosr.uncertainty.PixelErrors or None
        Per method, the scored tiles' errors and uncertainty
        (:func:`astrosr.uncertainty.pixel_errors`); None where the method has
        no uncertainty map (no ``samples``, BLU, RL, Wiener).
    trust : dict of str -> dict
        With posterior draws: per with-step SR row, its sources' spurious
        counts and completeness, all and with ``p_detect >= 0.9``
        (:func:`astrosr.metrics.source_trust`), and for the Wiener row its
        plain detections' (``detected``, ``spurious``, ``complete``).
    star_fwhm : dict of str -> float or None
        The resolution figure (median star FWHM, px; :mod:`astrosr.stars`)
        of ORI and of each method, at ORI's resolution stars; None without
        5 such stars.
    n_stars : int
        ORI's resolution stars.
    """

    name: str
    path: str
    field: str
    sha256: str
    shape: tuple
    ref: object
    scores: dict
    seconds: dict
    panels: dict
    calibration: dict = None
    trust: dict = None
    star_fwhm: dict = None
    n_stars: int = 0

    @property
    def megapixels(self):
        return self.shape[0] * self.shape[1] / 1e6


def _unique_labels(paths):
    labels = []
    for p in paths:
        p = Path(str(p))
        label = p.stem if str(p) != "default" else "default"
        if label in ("best", "last", "model") and p.parent.name:
            label = f"{p.parent.name}/{label}"
        labels.append(label)
    seen = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label}#{seen[label]}")
    return out


def method_names(model_labels: Sequence[str], choice: dict[str, Any], *, consistency: bool = True) -> list[str]:
    """Report rows in order: BLU, per model (with then without the step), RL, Wiener, BM3D (when installed).

    Parameters
    ----------
    model_labels : sequence of str
        One label per model.
    choice : dict
        The RL / Wiener choice (:func:`baseline_choice`).
    consistency : bool
        False drops the rows with the data-consistency step.

    Returns
    -------
    list of str

    Examples
    --------
    >>> from astrosr.baselines import default_choice
    >>> method_names(["resvae/best"], dict(default_choice("example"), bm3d_multiplier=1.0))
    ['BLU', 'SR resvae/best', 'SR resvae/best (no DC)', 'RL n=20', 'Wiener b=0.1', 'BM3D x1']
    """
    names = ["BLU"]
    for label in model_labels:
        if consistency:
            names.append(f"SR {label}")
        names.append(f"SR {label} (no DC)")
    names.append(f"RL n={choice['rl_iters']}")
    names.append(f"Wiener b={choice['wiener_balance']:g}")
    if choice.get("bm3d_multiplier") is not None:
        names.append(bm3d_name(choice))
    return names


def bm3d_name(choice: dict[str, Any]) -> str:
    """The BM3D row's name: ``'BM3D x1'`` (its noise multiplier)."""
    return f"BM3D x{choice['bm3d_multiplier']:g}"


def degraded(path: str | Path, kernel: np.ndarray, *, hdu: int | str | None = None,
             plane: int | None = None) -> tuple[np.ndarray, metrics.Reference, np.ndarray]:
    """ORI, its Reference and its bench-v1 BLU (fresh default_rng(0) per image).

    Parameters
    ----------
    path : str or Path
        A FITS image (read by :func:`astrosr.fits_io.read_image`).
    kernel : ndarray
        The true PSF, unit sum, odd sides.

    Returns
    -------
    ori : ndarray
    ref : astrosr.metrics.Reference
    blu : ndarray
        ORI convolved with ``kernel`` (edges extended), plus noise at ORI's
        sigma-clipped background std.

    Examples
    --------
    >>> from astrosr.psf import moffat_psf
    >>> from astrosr.simulate import example_field
    >>> path = example_field()
    >>> ori, ref, blu = degraded(path, moffat_psf(4.0, size=9))
    >>> ori.shape, blu.shape, len(ref.origins)
    ((128, 128), (128, 128), 1)
    """
    ori = read_image(path, hdu=hdu, plane=plane).data
    ref = metrics.reference(ori)
    blu, _ = bench_v1_degrade(ori, kernel, noise_std=ref.std)
    return ori, ref, blu


def baseline_choice(
    manifest: Manifest | None,
    data_dir: str | Path | None,
    psf: PSF,
    kernel: np.ndarray,
    *,
    out: str | Path,
    progress: Callable[[], None] | None = None,
    peers: bool = True,
) -> dict[str, Any]:
    """RL iterations, Wiener balance and (``peers``, bm3d installed) BM3D's multiplier for this run (``benchmarks/README.md``, section Report rows and baselines).

    Chosen by mean SSIM on the manifest's val field and cached in ``out``,
    keyed by manifest, PSF and val files; n = 20, b = 0.1 (with a note saying
    why) when there is no manifest or its val images are not available.

    Parameters
    ----------
    manifest : Manifest or None
        The run's manifest (None: images given, no val field).
    data_dir : str or Path or None
        Where the manifest's files are (default ``$ASTROSR_DATA_DIR``).
    psf : PSF
        The true PSF (part of the cache key).
    kernel : ndarray
        Its kernel.
    out : str or Path
        The evaluate output directory, holding the cache.
    progress : callable, optional
        Called once per val image done.
    peers : bool
        Include BM3D when the bm3d package is installed.

    Returns
    -------
    dict
        :func:`astrosr.baselines.choose_parameters`' keys; with a val choice
        also ``cached`` and ``val_images``.

    Examples
    --------
    >>> import tempfile
    >>> from astrosr.psf import moffat_psf
    >>> choice = baseline_choice(None, None, None, moffat_psf(4.0, size=9), out=tempfile.mkdtemp())
    >>> choice["rl_iters"], choice["wiener_balance"], choice["note"]
    (20, 0.1, 'images given: val images not part of the run')
    """
    from .files import sha256_file
    from .manifest import resolve

    bm3d = peers and baselines.bm3d_available()

    def fallback(reason):
        choice = baselines.default_choice(reason)
        return choice if bm3d else dict(choice, bm3d_multiplier=None)

    if manifest is None:
        return fallback("images given: val images not part of the run")
    if "val" not in manifest.fields:
        return fallback(f"{manifest.path}: no val field in the manifest")
    try:
        val = resolve(manifest, data_dir, ["val"])
    except AstrosrError as exc:  # a missing val file only costs the choice, never the run
        return fallback(f"val images not available ({exc})")
    key = {
        "manifest": {"name": manifest.name, "sha256": sha256_file(manifest.path)},
        "psf": psf.to_dict(),
        "psf_kernel_sha256": hashlib.sha256(np.ascontiguousarray(kernel).tobytes()).hexdigest(),
        "val": [sha256_file(p) for p, _ in val],
        "grid": {"rl_iters": list(baselines.RL_ITERS), "wiener_balances": list(baselines.WIENER_BALANCES),
                 "bm3d_multipliers": list(baselines.BM3D_MULTIPLIERS) if bm3d else None},
    }

    def compute():
        pairs = []
        for path, _ in val:
            _, ref, blu = degraded(path, kernel)
            pairs.append((ref, blu))
        return baselines.choose_parameters(pairs, kernel, progress=progress, bm3d=bm3d,
                                           cache_dir=Path(out) / BM3D_CACHE)

    choice, cached = baselines.cached_choice(out, key, compute)
    return dict(choice, cached=cached, val_images=[str(p) for p, _ in val])


def _panel_origins(ref, n):
    """Up to ``n`` tiles for the figure: the brightest, the median and the faintest by ORI mean."""
    if not ref.origins or n <= 0:
        return []
    order = np.argsort([t.mean() for t in ref.ori_tiles])[::-1]
    picks = [order[int(round(i))] for i in np.linspace(0, len(order) - 1, min(n, len(order)))]
    return [ref.origins[i] for i in dict.fromkeys(picks)]


def warm_up(
    models: Sequence[tuple[str, torch.nn.Module]],
    kernel: np.ndarray,
    psf_fwhm: float,
    device: str | torch.device,
    samples: int = 0,
) -> None:
    """One small untimed pass per model, so s/Mpix does not include torch's first-call setup.

    Parameters
    ----------
    models : sequence of (str, torch.nn.Module)
        ``(label, model)`` pairs.
    kernel : ndarray
        The PSF kernel the run uses.
    psf_fwhm : float
        Its FWHM in pixels.
    device : str or torch.device
    samples : int
        Posterior draws of the run (the warm-up draws at most 2).

    Examples
    --------
    >>> from astrosr.models import ResVAE
    >>> from astrosr.psf import moffat_psf
    >>> warm_up([("untrained", ResVAE())], moffat_psf(4.0, size=9), 4.0, "cpu")
    """
    dummy = np.random.default_rng(0).normal(size=(256, 256))
    for _, model in models:
        _network(dummy, model, kernel, psf_fwhm, device)


def _can_sample(model):
    return callable(getattr(model, "sample", None))


def _network(blu, model, kernel, psf_fwhm, device):
    """``restore_image`` without the step."""
    from .restore import restore_image

    return restore_image(blu, model, psf_kernel=kernel, psf_fwhm=psf_fwhm, consistency=False, device=device)


def _draws_sigma(blu, model, kernel, psf_fwhm, samples, consistency, device, observer=None):
    """The uncertainty of the model's path (draws through the step when it is on), or None."""
    import torch

    from .restore import restore_image

    if not (samples and _can_sample(model)):
        return None
    # seeded per model and image, so a rerun or a subset of the images draws the same; the caller's
    # torch RNG state is left as it was
    with torch.random.fork_rng(devices=[] if torch.device(device).type != "cuda" else None):
        torch.manual_seed(SAMPLE_SEED)
        return restore_image(blu, model, psf_kernel=kernel, psf_fwhm=psf_fwhm, consistency=consistency,
                             samples=samples, device=device, observer=observer).uncert


def _restore_all(blu, models, kernel, psf_fwhm, choice, consistency, device, samples=0, noise_std=None,
                 bm3d_cache=None, finder=None):
    """Yield ``(method, image, seconds, sigma, catalog)`` for every restoration method, timed.

    ``sigma`` is the model's per-pixel uncertainty (physical units) with
    ``samples`` > 0, else None: the std of draws of that row's own path
    (through the step for the with-step row), times the model's calibration.
    ``catalog`` (with-step rows with draws, else None) is the
    :class:`~astrosr.catalog.DrawCatalog` of those draws, detecting with
    ``finder``: its ``p_detect`` qualifies each source.
    """
    from .catalog import DrawCatalog
    from .restore import consistency_step

    for label, model in models:
        t0 = time.perf_counter()
        raw = _network(blu, model, kernel, psf_fwhm, device).sr
        t_raw = time.perf_counter() - t0
        if consistency:
            # restore_image's own last step, applied to the same network output (BLU has no NaN):
            # the with-step row costs one network pass less and equals restore_image(consistency=True)
            t0 = time.perf_counter()
            sr = consistency_step(raw, blu, kernel)
            seconds = t_raw + time.perf_counter() - t0
            catalog = (DrawCatalog(fwhm=metrics.FWHM, background_std=1.0, median=0.0, finder=finder)
                       if samples and finder is not None and _can_sample(model) else None)
            sigma = _draws_sigma(blu, model, kernel, psf_fwhm, samples, True, device, observer=catalog)
            yield f"SR {label}", sr, seconds, sigma, catalog
        yield f"SR {label} (no DC)", raw, t_raw, _draws_sigma(blu, model, kernel, psf_fwhm, samples, False, device), None
    t0 = time.perf_counter()
    rl = baselines.richardson_lucy(blu, kernel, n=choice["rl_iters"])
    yield f"RL n={choice['rl_iters']}", rl, time.perf_counter() - t0, None, None
    t0 = time.perf_counter()
    wi = baselines.wiener(blu, kernel, balance=choice["wiener_balance"])
    yield f"Wiener b={choice['wiener_balance']:g}", wi, time.perf_counter() - t0, None, None
    if choice.get("bm3d_multiplier") is not None and noise_std is not None and baselines.bm3d_available():
        bm, seconds = baselines.cached_bm3d(bm3d_cache, blu, kernel, noise_std=noise_std,
                                            multiplier=choice["bm3d_multiplier"])
        yield bm3d_name(choice), bm, seconds, None, None


def _panel_crops(ref, images, origins, panel_methods):
    crops = {"ORI": extract_tiles((ref.ori - ref.lo) / (ref.hi - ref.lo), origins, ref.tile)}
    for title, method in panel_methods:
        crops[title] = extract_tiles((images[method] - ref.lo) / (ref.hi - ref.lo), origins, ref.tile)
    return crops


def score_image(
    path: str | Path,
    field: str,
    kernel: np.ndarray,
    models: Sequence[tuple[str, torch.nn.Module]],
    psf_fwhm: float,
    choice: dict[str, Any],
    consistency: bool,
    device: str | torch.device,
    n_panels: int,
    samples: int = 0,
    *,
    hdu: int | str | None = None,
    plane: int | None = None,
    bm3d_cache: str | Path | None = None,
) -> ImageResult:
    """Degrade one image as bench-v1 does, restore it by every method and score each against ORI.

    Parameters
    ----------
    path : str or Path
        The original image (ORI), a FITS file.
    field : str
        Its field, recorded in the result.
    kernel : ndarray
        The true PSF: the degradation and every PSF-aware method.
    models : sequence of (str, torch.nn.Module)
        ``(label, model)`` pairs; each gives an ``SR label`` row (with the
        data-consistency step, when ``consistency``) and ``SR label (no DC)``.
    psf_fwhm : float
        The PSF's FWHM in pixels, for models conditioned on it.
    choice : dict
        RL iterations and Wiener balance (:func:`baseline_choice`).
    consistency : bool
        Include the rows with the data-consistency step.
    device : str or torch.device
        Where the models run.
    n_panels : int
        Tiles of this image shown in the figure.
    samples : int
        Posterior draws per model (0: none); with draws the SR rows get
        calibration counts.

    Returns
    -------
    ImageResult

    Examples
    --------
    >>> from astrosr.baselines import default_choice
    >>> from astrosr.models import ResVAE
    >>> from astrosr.psf import moffat_psf
    >>> from astrosr.simulate import example_field
    >>> path = example_field()
    >>> choice = dict(default_choice("example"), bm3d_multiplier=None)  # no BM3D row
    >>> result = score_image(path, "val", moffat_psf(4.0, size=9), [("untrained", ResVAE())], 4.0,
    ...                      choice, True, "cpu", 1)
    >>> list(result.scores)
    ['BLU', 'SR untrained', 'SR untrained (no DC)', 'RL n=20', 'Wiener b=0.1']
    """
    from .files import sha256_file

    _, ref, blu = degraded(path, kernel, hdu=hdu, plane=plane)
    if not ref.origins:
        raise InputError(f"{path}: no {ref.tile}x{ref.tile} tile of the image is free of NaN or infinite pixels: "
                         "nothing to score")
    images = {"BLU": blu}
    seconds = {"BLU": None}
    calibration = {"BLU": None}
    trust = {}
    for method, image, secs, sigma, catalog in _restore_all(
            blu, models, kernel, psf_fwhm, choice, consistency, device, samples, noise_std=ref.std,
            bm3d_cache=bm3d_cache, finder=lambda im: metrics.detected(ref, im)):
        images[method] = image
        seconds[method] = secs
        calibration[method] = None if sigma is None else pixel_errors(ref, image, sigma)
        if catalog is not None:
            trust[method] = metrics.source_trust(ref, catalog.xy, catalog.p_detect)
    if trust:  # the peer a trusted source list is held against: Wiener's plain detections
        wiener_name = next(m for m in images if m.startswith("Wiener "))
        found = metrics.detected(ref, images[wiener_name])
        trust[wiener_name] = {"detected": len(found), "spurious": int(np.count_nonzero(~ref.near_reference(found))),
                              "complete": metrics.matched_sources(ref, found), "n_sources": int(ref.n_sources)}
    scores = {m: metrics.score(ref, img) for m, img in images.items()}
    stars = resolution_stars(ref.ori)
    sharpness = {m: star_fwhm(img, stars) for m, img in {"ORI": ref.ori, **images}.items()}
    names = list(images)
    sr = next((m for m in names if m.startswith("SR ")), None)
    rl = next(m for m in names if m.startswith("RL "))
    wi = next(m for m in names if m.startswith("Wiener "))
    shown = sr or wi
    panel_methods = [("BLU", "BLU"), (shown, shown), (rl, rl)]
    origins = _panel_origins(ref, n_panels)
    crops = _panel_crops(ref, images, origins, panel_methods)
    crops[f"{shown} - ORI"] = crops[shown] - crops["ORI"]
    return ImageResult(
        name=strip_fits_suffix(Path(path).name),
        path=str(path),
        field=field,
        sha256=sha256_file(path),
        shape=tuple(ref.ori.shape),
        ref=ref,
        scores=scores,
        seconds=seconds,
        panels={"origins": origins, "tiles": crops},
        calibration=calibration,
        trust=trust,
        star_fwhm=sharpness,
        n_stars=len(stars),
    )


def load_models(paths: Sequence[str | Path], device: str | torch.device) -> list[dict[str, Any]]:
    """Load the models to score, each with a unique report label.

    Parameters
    ----------
    paths : sequence of str or Path
        Checkpoints or model files, or ``'default'`` (the shipped weights).
    device : str or torch.device

    Returns
    -------
    list of dict
        ``label``, ``path``, ``model`` and ``info`` (:func:`astrosr.checkpoint.load_model`'s).

    Raises
    ------
    ConfigError
        A model's scale is not 1 (bench-v1 scores scale 1 only).

    Examples
    --------
    >>> [m["label"] for m in load_models(["default"], "cpu")]
    ['default']
    """
    if not paths:
        return []
    from .checkpoint import load_model

    loaded = []
    for label, path in zip(_unique_labels(paths), paths):
        model, info = load_model(path, device=device)
        if int(getattr(model, "scale", 1)) != 1:
            raise ConfigError(f"{path}: model has scale {model.scale}; bench-v1 scores scale 1 only")
        loaded.append({"label": label, "path": str(path), "model": model, "info": info})
    return loaded
