"""``astrosr train``: one readable training loop, resumable exactly, single or multi-process.

:func:`train` reads top to bottom: processes and device, the tiles, the
model and AdamW (warm-up + cosine, gradient clipping), then the loop: a
batch, :func:`astrosr.losses.batch_loss`, a step; every ``val_every`` steps
validate (:mod:`astrosr.validation`) and save ``last.pt`` (and ``best.pt``
when best so far), each a plain dict (:mod:`astrosr.checkpoint`).

Every random choice is a function of ``(seed, step, rank)`` (tiles and
augmentations from :class:`~astrosr.dataset.TileSampler`, latent noise from
a generator re-seeded every step, :mod:`astrosr.train_runtime`): 4 steps
straight or 2, then 2 more with ``resume``, give identical weights.
Multi-process: ``torchrun --no-python --nproc_per_node N astrosr train ...``
(DistributedDataParallel); rank 0 validates and writes every file.
"""

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoint import save_checkpoint
from .config import to_dict
from .dataset import PairsDataset, TileSampler
from .errors import ConfigError
from .files import make_dir
from .losses import batch_loss, make_optimizer
from .models import build_model
from .pairs import fields as pairs_fields
from .pairs import read_meta, trained_psf
from .progress import ProgressCallback, report
from .provenance import hardware, versions
from .train_log import MetricsLog, write_config, write_json
from .train_runtime import (init_processes, out_of_time, resume_point, rng_state, seed_everything, select_device,
                            set_rng_state, step_seed)
from .train_config import RUNTIME_KEYS, TrainConfig, load_config
from .validation import describe, is_better, load_val_images, rl_reference, validate

__all__ = ["TrainConfig", "load_config", "train", "RUNTIME_KEYS"]

logger = logging.getLogger(__name__)

# --- the steps of train(), in the order it takes them --------------------------


def holdout_images(meta, cfg: TrainConfig) -> list[int] | None:
    """Images of the train field held out for validation when the pairs file has no ``val_field`` tiles.

    None when the file has val tiles (or validation is off). Otherwise about
    a tenth of the train images, at least one, drawn with the run's seed (the
    same on resume); none of a single image: that run trains without
    validation and keeps its latest checkpoint as best.
    """
    present = set(pairs_fields(meta.tiles))
    if not cfg.val_field or cfg.val_field in present:
        return None
    train_images = sorted({int(i) for i, f in zip(meta.tiles["image"], pairs_fields(meta.tiles)) if f in cfg.train_fields})
    if len(train_images) < 2:
        return []
    count = max(1, round(0.1 * len(train_images)))
    return sorted(int(i) for i in np.random.default_rng(cfg.seed).choice(train_images, count, replace=False))


def _start_run_dir(out: Path, cfg: TrainConfig, pairs, val_set, holdout):
    """Create ``out`` with its ``config.yaml``; ``(val_images, note)`` for whole-image validation."""
    make_dir(out)
    write_config(out / "config.yaml", to_dict(cfg), f"astrosr {__version__} train config; pairs: {Path(pairs).resolve()}")
    if holdout == []:
        return None, f"no validation: no {cfg.val_field!r} tiles and a single training image; best.pt is the latest"
    if val_set is None:
        return None, "no validation (val_field is empty): best.pt is the latest"
    if not cfg.val_images:
        return None, "disabled (val_images: false)"
    if holdout:
        return load_val_images(val_set, field=cfg.train_fields, indices=holdout)
    return load_val_images(val_set, field=cfg.val_field)


def _start_from(raw, cfg: TrainConfig) -> None:
    """Load ``cfg.init``'s weights into the fresh model (fine-tuning); a different architecture is an error."""
    from .checkpoint import load_model

    source, info = load_model(cfg.init, device="cpu")
    # a model may gain a posterior or a noise head over its source: those parts start fresh, the rest is loaded
    added = {"posterior": ("post_",), "noise_head": ("scale_head",)}
    gained = [k for k in added if raw.config.get(k) and not source.config.get(k, False)]
    same = {k: v for k, v in source.config.items() if k not in gained} == {
        k: v for k, v in raw.config.items() if k not in gained}
    if info.get("model") != cfg.model or not same:
        raise ConfigError(f"init: {cfg.init} holds a {info.get('model')} with {source.config}, not this run's "
                          f"{cfg.model} with {raw.config}")
    asked = tuple(cfg.fresh or ())
    held = source.state_dict()
    for prefix in asked:
        if not any(k.startswith(prefix) for k in held):
            raise ConfigError(f"fresh: no parameter of {cfg.init} starts with {prefix}")
    weights = {k: v for k, v in held.items() if not k.startswith(asked)}
    missing, unexpected = raw.load_state_dict(weights, strict=False)
    fresh = tuple(p for k in gained for p in added[k]) + asked
    if unexpected or any(not name.startswith(fresh) for name in missing):
        raise ConfigError(f"init: {cfg.init}'s weights do not fit this run's {cfg.model}")
    new = gained + [f"{', '.join(asked)} (fresh)"] if asked else gained
    logger.info("starting from the weights of %s (sha256 %s)%s", cfg.init, str(info.get("sha256"))[:16],
                f"; new: {', '.join(new)}" if new else "")


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"


def _calibrate_best(path: Path, val_images, cfg: TrainConfig, device, tile: int) -> dict | None:
    """Fit best.pt's uncertainty scale on the val images and store it in best.pt (``uncertainty``)."""
    from .checkpoint import load_checkpoint, load_model
    from .uncertainty import calibrate

    payload = load_checkpoint(path)
    done = payload.get("uncertainty") or {}
    if done.get("step") == payload.get("step") and done.get("samples") == cfg.uncertainty_samples:
        return done  # a resumed run that had finished: best.pt is left as it is
    model, _ = load_model(path, device=device)
    if not callable(getattr(model, "sample", None)) or getattr(model, "native_tile", None):
        return None
    record = calibrate(model, val_images, samples=cfg.uncertainty_samples, seed=cfg.seed, device=device, tile=tile)
    record["step"] = payload.get("step")
    payload["uncertainty"] = record
    save_checkpoint(path, payload)
    logger.info("uncertainty of best.pt calibrated on the val images: scale %.4g (%d draws; source pixels within "
                "1 sigma %.3f, 2 sigma %.3f)", record["scale"], record["samples"], record["within_1"], record["within_2"])
    return record


def _checkpoint(cfg: TrainConfig, raw, optimizer, scheduler, *, step: int, best, last_val, about: dict) -> dict:
    """The checkpoint payload: a plain dict of tensors and plain data (``about``: its ``psf`` and ``data``)."""
    return {
        "model": cfg.model, "model_config": dict(raw.config),
        "state_dict": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
        "step": step, "best": best, "last_val": last_val, "train_config": to_dict(cfg), "psf": about["psf"],
        "data": about["data"], "astrosr_version": __version__,
    }


# --- the loop -------------------------------------------------------------------


def train(pairs: str | Path, config: TrainConfig, out: str | Path, *, resume: bool = False,
          stop_at: int | None = None, progress: ProgressCallback = None) -> dict:
    """Train a model on a pairs file; write ``out/{best,last}.pt``, ``metrics.csv``, ``loss_curve.png``.

    Parameters
    ----------
    pairs : str or Path
        Pairs file from ``astrosr prepare`` (fields ``config.train_field`` and
        ``config.val_field``).
    config : TrainConfig
    out : str or Path
        Run directory.
    resume : bool
        Continue exactly from ``out/last.pt``.
    stop_at : int, optional
        Stop after this step (saving ``last.pt``) although the schedule runs
        to ``max_steps``: a run split into several sittings.
    progress : callable, optional
        ``progress('steps', done, total)`` after every step, on rank 0
        (:mod:`astrosr.progress`). Validation results are logged to this
        module's logger at INFO.

    Returns
    -------
    dict
        Summary (also written to ``out/summary.json``): steps, best record,
        last validation, time, device, versions; ``module`` holds the
        trained model.

    Raises
    ------
    InputError
        A bad pairs file; ``out`` holding a run without ``resume``, or nothing to resume.
    ConfigError
        An option that cannot change on resume, or a diverged run.

    Examples
    --------
    >>> cfg = load_config("pipelines/train_resvae.yaml", {"max_steps": 100})  # doctest: +SKIP
    >>> summary = train("pairs.h5", cfg, "runs/resvae")  # doctest: +SKIP
    >>> summary["best"]["step"]  # doctest: +SKIP
    100
    """
    cfg, out = config, Path(out)
    rank, world, local_rank = init_processes(cfg.device)
    distributed, main = world > 1, rank == 0
    if main:
        make_dir(out)  # an output directory that cannot be written is an error before any work
    device = select_device(cfg.device, threads=cfg.threads, local_rank=local_rank, world=world)
    saved = resume_point(out, resume, to_dict(cfg), runtime_keys=RUNTIME_KEYS)

    holdout = holdout_images(read_meta(pairs), cfg)
    if holdout:
        logger.info("no %r tiles in %s: validating on %d held-out training image(s) (rows %s of its images table)",
                    cfg.val_field, pairs, len(holdout), ", ".join(map(str, holdout)))
    elif holdout == []:
        logger.warning("no %r tiles in %s and a single training image: training without validation; best.pt is the "
                       "latest checkpoint", cfg.val_field, pairs)
    train_set = PairsDataset(pairs, field=cfg.train_field, in_memory=cfg.in_memory, augment=cfg.augment,
                             crop=cfg.crop or None, skip_images=holdout or ())
    if not main or not cfg.val_field or holdout == []:
        val_set = None
    elif holdout:
        val_set = PairsDataset(pairs, field=cfg.train_field, in_memory=True, only_images=holdout)
    else:
        val_set = PairsDataset(pairs, field=cfg.val_field, in_memory=True)

    seed_everything(cfg.seed)
    raw = build_model(cfg.model, dict(cfg.model_options, scale=train_set.scale)).to(device)
    if cfg.init and saved is None:
        _start_from(raw, cfg)
    if cfg.trainable is not None:
        prefixes = tuple(cfg.trainable)
        names = [n for n, _ in raw.named_parameters() if n.startswith(prefixes)]
        if not names:
            raise ConfigError(f"trainable: no parameter of {cfg.model} starts with {', '.join(prefixes) or 'nothing'}")
        for n, p in raw.named_parameters():
            p.requires_grad_(n.startswith(prefixes))
    optimizer, scheduler = make_optimizer(raw, cfg)
    step, best, last_val = 0, None, None
    if saved is not None:
        raw.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, best, last_val = int(saved["step"]), saved.get("best"), saved.get("last_val")
        set_rng_state(saved["rng"])
    model = raw
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = TileSampler(len(train_set), batch=cfg.batch, seed=cfg.seed, rank=rank, world=world, start_step=step)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch, sampler=sampler,
                                         num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    batches = iter(loader)

    val_images, val_note, reference = None, "disabled (val_images: false)", None
    if main:
        val_images, val_note = _start_run_dir(out, cfg, pairs, val_set, holdout)
        reference = rl_reference(val_images)
        if reference is not None:
            logger.info("Richardson-Lucy (n=20) on the %d val image(s): flux error %s, spurious %d/%d; best.pt is the "
                        "lowest val MSE no worse on both", len(val_images), _fmt(reference["flux_err"]),
                        reference["n_spurious"], reference["n_sources"])
        log = MetricsLog(out, resume_step=step if resume else None)
    tile = raw.native_tile or 512  # restore_image's default: validation scores what evaluate scores
    about = {"psf": trained_psf(train_set.meta, train_set.tiles["psf_fwhm"]),
             "data": {"pairs": str(Path(pairs).resolve()), "train_tiles": len(train_set),
                      "val_tiles": len(val_set) if val_set is not None else None}}
    last_step = min(cfg.max_steps, stop_at or cfg.max_steps)

    if main:
        report(progress, "steps", step, last_step)
    start_time = time.perf_counter()
    window_time, window_tiles = start_time, 0
    raw.train()
    try:
        while step < last_step:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in next(batches).items()}
            torch.manual_seed(step_seed(cfg.seed, step, rank))
            loss, terms = batch_loss(model, raw, batch, cfg, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            window_tiles += cfg.batch * world
            if not math.isfinite(terms["loss"]):
                raise ConfigError(f"training diverged at step {step} (loss {terms['loss']}); lower lr")

            over_time = out_of_time(start_time, cfg.max_minutes, distributed=distributed, device=device)
            validating = step % cfg.val_every == 0 or step == last_step or over_time
            if main and (validating or step % cfg.log_every == 0):
                now = time.perf_counter()
                row = {"step": step, "lr": scheduler.get_last_lr()[0],
                       "tiles_per_s": window_tiles / max(now - window_time, 1e-9), "elapsed_s": now - start_time,
                       **terms}
                window_time, window_tiles = now, 0
                if validating:
                    last_val = validate(raw, val_set, val_images, step=step, device=device, tile=tile)
                    raw.train()
                    row.update({f"val_{k}": v for k, v in last_val.items() if k != "step"})
                    better = is_better(last_val, best, reference=reference)
                    best = last_val if better else best
                    payload = _checkpoint(cfg, raw, optimizer, scheduler, step=step, best=best, last_val=last_val,
                                          about=about)
                    if better:
                        save_checkpoint(out / "best.pt", payload)
                    save_checkpoint(out / "last.pt", payload)
                    logger.info("step %d: val %s", step, describe(last_val))
                    window_time = time.perf_counter()  # throughput counts training only
                log.add(row)
            if main:
                report(progress, "steps", step, last_step)
            if distributed and validating:
                torch.distributed.barrier()
            if over_time:
                break
    except KeyboardInterrupt:
        if main and step > 0:
            save_checkpoint(out / "last.pt", _checkpoint(cfg, raw, optimizer, scheduler, step=step, best=best,
                                                         last_val=last_val, about=about))
        raise

    calibration = None
    if main and val_images and cfg.uncertainty_samples and (out / "best.pt").is_file():
        calibration = _calibrate_best(out / "best.pt", val_images, cfg, device, tile)
    summary = {
        "pairs": str(Path(pairs).resolve()), "steps": step, "max_steps": cfg.max_steps, "best": best, "last_val": last_val,
        "val_images": val_note or (f"{len(holdout)} held-out training image(s)" if holdout else "the val images")
        + " scored with evaluate's path",
        "val_reference": {"method": "Richardson-Lucy n=20", **reference} if reference else None,
        "uncertainty": calibration,
        "seconds": time.perf_counter() - start_time, "world_size": world, "device": str(device),
        "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in raw.parameters()),
        "model": cfg.model, "model_config": raw.config, "train_tiles": len(train_set), "versions": versions(),
        "hardware": hardware(device),
    }
    if main:
        log.plot()
        write_json(out / "summary.json", summary)
    if distributed:
        torch.distributed.barrier()
    summary["module"] = raw
    return summary
