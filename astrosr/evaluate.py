"""``astrosr evaluate``: bench-v1 scores of models beside BLU and the classical baselines.

Each image of the chosen field(s) is degraded exactly as bench-v1 does (whole
image, the true PSF, a fresh ``default_rng(0)``), restored by every method
(each model through :func:`astrosr.restore.restore_image`, with and without
the data-consistency step; Richardson-Lucy; Wiener) and scored by
:mod:`astrosr.metrics` against ORI. ORI's work (tiles, source lists) is done
once per image and shared by every method. The files it writes are listed in
:func:`evaluate`; :mod:`astrosr.evaluate_report` renders them.
"""

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import baselines, metrics
from .degrade import bench_v1_degrade
from .psf import BENCH_V1_PSF
from .errors import AstrosrError, ConfigError, InputError
from .files import make_dir
from .fits_io import read_image, strip_fits_suffix
from .tiling import extract_tiles

__all__ = ["BENCH_FIELDS", "ImageResult", "evaluate", "load_sources", "resolve_psf", "baseline_choice", "method_names",
           "calibration_counts"]

BENCH_FIELDS = ("train", "val", "other_sky", "simulated")
IMAGES_FIELD = "images"
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
    calibration : dict of str -> (int, int) or None
        Per method, ``(pixels with |SR - ORI| <= sigma, pixels)`` over the
        scored tiles (:func:`calibration_counts`); None where the method has
        no uncertainty map (no ``--samples``, BLU, RL, Wiener).
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


def method_names(model_labels, choice, *, consistency=True):
    """Report rows in order: BLU, per model (with then without the step), RL, Wiener."""
    names = ["BLU"]
    for label in model_labels:
        if consistency:
            names.append(f"SR {label}")
        names.append(f"SR {label} (no DC)")
    names.append(f"RL n={choice['rl_iters']}")
    names.append(f"Wiener b={choice['wiener_balance']:g}")
    return names


def _manifest(manifest, *, required):
    """The loaded manifest: required with --field, else only if its file exists (PSF names)."""
    from .manifest import Manifest, load_manifest

    if isinstance(manifest, Manifest):
        return manifest
    if manifest is None or not (required or Path(manifest).is_file()):
        if required:
            raise ConfigError("--field needs --manifest (e.g. data_manifests/bench_v1.yaml)")
        return None
    return load_manifest(manifest)


def load_sources(*, fields=None, images=None, manifest=None, data_dir=None):
    """The images to score as ``[(path, field)]``.

    Parameters
    ----------
    fields : list of str, optional
        Manifest fields; ``'all'`` means every bench-v1 field in the manifest.
    images : list of path, optional
        Arbitrary FITS files (field ``'images'``); exclusive with ``fields``.
    manifest : Manifest, optional
        Needed with ``fields``.
    data_dir : path, optional
        Where the manifest's files are (default ``$ASTROSR_DATA_DIR``).
    """
    from .manifest import resolve

    if bool(fields) == bool(images):
        raise ConfigError("give either --field or --images (exactly one of them)")
    if images:
        missing = [str(p) for p in images if not Path(p).is_file()]
        if missing:
            raise InputError(f"{missing[0]}: image file not found")
        return [(Path(p), IMAGES_FIELD) for p in images]
    if manifest is None:
        raise ConfigError("--field needs --manifest (e.g. data_manifests/bench_v1.yaml)")
    wanted = []
    for f in fields:
        wanted.extend([x for x in BENCH_FIELDS if x in manifest.fields] if f == "all" else [f])
    return [(Path(p), f) for p, f in resolve(manifest, data_dir, list(dict.fromkeys(wanted)))]


def resolve_psf(psf, manifest, data_dir):
    """``psf`` with a file PSF that is not a path looked up by name in the manifest's PSFs."""
    from dataclasses import replace

    from .manifest import psf_path

    if psf.shape != "file" or Path(psf.path).is_file():
        return psf
    names = [e.file for e in manifest.psfs] if manifest is not None else []
    if psf.path not in names:
        where = f"in {manifest.path}" if manifest is not None else "in any manifest"
        raise InputError(f"{psf.path}: PSF file not found, nor a PSF named {where} ({', '.join(names) or 'none'})")
    return replace(psf, path=str(psf_path(manifest, psf.path, data_dir)))


def _degraded(path, kernel):
    """ORI, its Reference and its bench-v1 BLU (fresh default_rng(0) per image)."""
    ori = read_image(path).data
    ref = metrics.reference(ori)
    blu, _ = bench_v1_degrade(ori, kernel, noise_std=ref.std)
    return ori, ref, blu


def baseline_choice(manifest, data_dir, psf, kernel, *, out, progress=None):
    """RL iterations and Wiener balance for this run (BENCHMARK.md 6, CONTRACTS.md 4).

    Chosen by mean SSIM on the manifest's val field and cached in ``out``,
    keyed by manifest, PSF and val files; n = 20, b = 0.1 (with a note saying
    why) when there is no manifest or its val images are not available.
    """
    from .files import sha256_file
    from .manifest import resolve

    if manifest is None:
        return baselines.default_choice("--images run: val images not part of the run")
    if "val" not in manifest.fields:
        return baselines.default_choice(f"{manifest.path}: no val field in the manifest")
    try:
        val = resolve(manifest, data_dir, ["val"])
    except AstrosrError as exc:  # a missing val file only costs the choice, never the run
        return baselines.default_choice(f"val images not available ({exc})")
    key = {
        "manifest": {"name": manifest.name, "sha256": sha256_file(manifest.path)},
        "psf": psf.to_dict(),
        "psf_kernel_sha256": hashlib.sha256(np.ascontiguousarray(kernel).tobytes()).hexdigest(),
        "val": [sha256_file(p) for p, _ in val],
        "grid": {"rl_iters": list(baselines.RL_ITERS), "wiener_balances": list(baselines.WIENER_BALANCES)},
    }

    def compute():
        pairs = []
        for path, _ in val:
            _, ref, blu = _degraded(path, kernel)
            pairs.append((ref, blu))
        return baselines.choose_parameters(pairs, kernel, progress=progress)

    choice, cached = baselines.cached_choice(out, key, compute)
    return dict(choice, cached=cached, val_images=[str(p) for p, _ in val])


def _panel_origins(ref, n):
    """Up to ``n`` tiles for the figure: the brightest, the median and the faintest by ORI mean."""
    if not ref.origins or n <= 0:
        return []
    order = np.argsort([t.mean() for t in ref.ori_tiles])[::-1]
    picks = [order[int(round(i))] for i in np.linspace(0, len(order) - 1, min(n, len(order)))]
    return [ref.origins[i] for i in dict.fromkeys(picks)]


def _warm_up(models, kernel, psf_fwhm, device, samples=0):
    """One small untimed pass per model, so s/Mpix does not include torch's first-call setup."""
    dummy = np.random.default_rng(0).normal(size=(256, 256))
    for _, model in models:
        _network(dummy, model, kernel, psf_fwhm, min(samples, 2), device)


def calibration_counts(ref, image, sigma):
    """``(within, pixels)``: scored-tile pixels where ``|image - ORI| <= sigma``.

    Parameters
    ----------
    ref : astrosr.metrics.Reference
        ORI's reference: its scored tiles (NaN-free bench-v1 grid) are the pixels counted.
    image, sigma : ndarray
        A restoration and its per-pixel uncertainty, both in ORI's physical
        units (the same affine map as the scoring normalisation, so the count
        is the same in normalised units); pixels where either is not finite
        are not counted.
    """
    if not ref.origins:
        return 0, 0
    err = np.abs(extract_tiles(np.asarray(image, dtype=np.float64), ref.origins, ref.tile)
                 - extract_tiles(ref.ori, ref.origins, ref.tile))
    sig = extract_tiles(np.asarray(sigma, dtype=np.float64), ref.origins, ref.tile)
    counted = np.isfinite(err) & np.isfinite(sig)
    return int(np.count_nonzero(err[counted] <= sig[counted])), int(np.count_nonzero(counted))


def _can_sample(model):
    return callable(getattr(model, "sample", None))


def _network(blu, model, kernel, psf_fwhm, samples, device):
    """``restore_image`` without the step; with ``samples`` one call also gives sigma (same mean pass)."""
    import torch

    from .restore import restore_image

    if not (samples and _can_sample(model)):
        return restore_image(blu, model, psf_kernel=kernel, psf_fwhm=psf_fwhm, consistency=False, device=device)
    # seeded per model and image, so a rerun or a subset of the images draws the same; the caller's
    # torch RNG state is left as it was
    with torch.random.fork_rng(devices=[] if torch.device(device).type != "cuda" else None):
        torch.manual_seed(SAMPLE_SEED)
        return restore_image(blu, model, psf_kernel=kernel, psf_fwhm=psf_fwhm, consistency=False, samples=samples,
                             device=device)


def _restore_all(blu, models, kernel, psf_fwhm, choice, consistency, device, samples=0):
    """Yield ``(method, image, seconds, sigma)`` for every restoration method, timed.

    ``sigma`` is the model's per-pixel posterior std (physical units) with
    ``samples`` > 0, else None; both SR rows of a model share it.
    """
    from .restore import consistency_step

    for label, model in models:
        t0 = time.perf_counter()
        restored = _network(blu, model, kernel, psf_fwhm, samples, device)
        raw, sigma = restored.sr, restored.uncert
        t_raw = time.perf_counter() - t0
        if consistency:
            # restore_image's own last step, applied to the same network output (BLU has no NaN):
            # the with-step row costs one network pass less and equals restore_image(consistency=True)
            t0 = time.perf_counter()
            sr = consistency_step(raw, blu, kernel)
            yield f"SR {label}", sr, t_raw + time.perf_counter() - t0, sigma
        yield f"SR {label} (no DC)", raw, t_raw, sigma
    t0 = time.perf_counter()
    rl = baselines.richardson_lucy(blu, kernel, n=choice["rl_iters"])
    yield f"RL n={choice['rl_iters']}", rl, time.perf_counter() - t0, None
    t0 = time.perf_counter()
    wi = baselines.wiener(blu, kernel, balance=choice["wiener_balance"])
    yield f"Wiener b={choice['wiener_balance']:g}", wi, time.perf_counter() - t0, None


def _panel_crops(ref, images, origins, panel_methods):
    crops = {"ORI": extract_tiles((ref.ori - ref.lo) / (ref.hi - ref.lo), origins, ref.tile)}
    for title, method in panel_methods:
        crops[title] = extract_tiles((images[method] - ref.lo) / (ref.hi - ref.lo), origins, ref.tile)
    return crops


def _score_image(path, field, kernel, models, psf_fwhm, choice, consistency, device, n_panels, samples=0):
    from .files import sha256_file

    _, ref, blu = _degraded(path, kernel)
    images = {"BLU": blu}
    seconds = {"BLU": None}
    calibration = {"BLU": None}
    for method, image, secs, sigma in _restore_all(blu, models, kernel, psf_fwhm, choice, consistency, device,
                                                   samples):
        images[method] = image
        seconds[method] = secs
        calibration[method] = None if sigma is None else calibration_counts(ref, image, sigma)
    scores = {m: metrics.score(ref, img) for m, img in images.items()}
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
    )


def evaluate(
    *,
    out,
    fields=None,
    images=None,
    models=(),
    manifest=None,
    data_dir=None,
    psf=None,
    consistency=True,
    threads=None,
    device="cpu",
    panels=3,
    samples=0,
    console=None,
    progress=True,
):
    """Score models, BLU, Richardson-Lucy and Wiener on bench-v1 fields or given images.

    Parameters
    ----------
    out : str or Path
        Output directory (created). It receives ``report.md``, ``metrics.csv``
        (one row per tile and method), ``summary.json`` (per field and per
        image, with provenance), ``panels/<image>.png``, ``ssim_by_field.png``
        and ``baselines_choice.json`` (the cached RL/Wiener choice). Existing
        report files there are replaced; the cache is reused.
    fields : list of str, optional
        bench-v1 fields (train, val, other_sky, simulated, or all).
    images : list of path, optional
        Arbitrary images instead of fields.
    models : sequence of path
        Checkpoints or model files (:func:`astrosr.checkpoint.load_model`);
        each gives an SR row with the consistency step and one without.
    manifest : path, optional
        Manifest of the fields (e.g. ``data_manifests/bench_v1.yaml``).
    data_dir : path, optional
        Data directory of the manifest's files.
    psf : astrosr.psf.PSF, optional
        The true PSF: degradation and every PSF-aware method (default bench-v1's).
    consistency : bool
        False drops the rows with the data-consistency step.
    threads : int, optional
        torch threads (recorded either way).
    device : str
        torch device of the models.
    panels : int
        Tiles per image in the PNG panels.
    samples : int
        Posterior draws per model and image (0: off). With N > 0 each model
        that has a ``sample`` method restores once with ``samples=N``
        (:func:`astrosr.restore.restore_image`: the same mean pass plus a
        per-pixel std map sigma) and both its SR rows get
        ``calibration_1sigma``: the fraction of the scored tiles' pixels with
        ``|SR - ORI| <= sigma`` (about 0.683 for a calibrated Gaussian
        map). The SR rows' s/Mpix then include the draws.
    console : rich.console.Console, optional
        Where the table and progress go (default: a new stdout console).
    progress : bool
        Show a progress bar over images.

    Returns
    -------
    dict
        The content of ``summary.json``.
    """
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .evaluate_report import write_outputs

    # a log file or pipe gets rich's 80 columns, too narrow for the method table: every cell ends in '…'
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    psf = psf or BENCH_V1_PSF
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise ConfigError(f"--samples must be an integer >= 0, got {samples!r}")
    samples = int(samples)
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    psf_by_name = psf.shape == "file" and not Path(psf.path).is_file()
    loaded = _manifest(manifest, required=bool(fields)) if fields or psf_by_name else None
    sources = load_sources(fields=fields, images=images, manifest=loaded, data_dir=data_dir)
    psf = resolve_psf(psf, loaded, data_dir)
    loaded_models = _load_models(models, device)
    kernel = psf.kernel()
    psf_fwhm = psf.fwhm_px(kernel)
    out = Path(out)
    created = not out.exists()
    make_dir(out)
    try:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        results = []
        with Progress(*columns, console=console, disable=not (progress and console.is_terminal),
                      transient=True) as bar:
            task = bar.add_task("choosing RL/Wiener on val", total=None)
            choice = baseline_choice(loaded if fields else None, data_dir, psf, kernel, out=out)
            _warm_up([(m["label"], m["model"]) for m in loaded_models], kernel, psf_fwhm, device, samples)
            bar.update(task, total=len(sources), completed=0)
            for path, field in sources:
                bar.update(task, description=f"{field}: {Path(path).name}")
                results.append(
                    _score_image(path, field, kernel, [(m["label"], m["model"]) for m in loaded_models],
                                 psf_fwhm, choice, consistency, device, panels, samples)
                )
                bar.advance(task)
        _dedupe_names(results)
        return write_outputs(
            out,
            results,
            methods=method_names([m["label"] for m in loaded_models], choice, consistency=consistency),
            choice=choice,
            models=loaded_models,
            manifest=loaded,
            psf=psf,
            psf_fwhm=psf_fwhm,
            device=device,
            console=console,
            options={"fields": fields, "images": [str(p) for p in images or []], "consistency": consistency,
                     "data_dir": str(data_dir) if data_dir else None, "samples": samples,
                     "sample_seed": SAMPLE_SEED if samples else None},
        )
    except BaseException:
        # a failed run must not leave an empty report directory behind
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _dedupe_names(results):
    names = [r.name for r in results]
    for i, r in enumerate(results):
        if names.count(r.name) > 1:
            r.name = f"{r.name}#{i}"


def _load_models(paths, device):
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
