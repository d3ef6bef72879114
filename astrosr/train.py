"""``astrosr train``: one readable training loop, resumable exactly, single or multi-process.

The loss per batch (reductions identical for both models)::

    loss = recon(y, to_intensity(ori))               # L1 or MSE, mean over pixels
         + beta_t * kl                               # per-pixel KL (models.py), linear warm-up
         + ssim_weight * (1 - SSIM(sr, ori))         # on model units clipped to [0, 1]
         + consistency_weight * recon(to_intensity(PSF * sr), to_intensity(blu))

AdamW, linear warm-up then cosine decay to ``min_lr_ratio * lr``, gradient
clipping. Every random choice is a function of ``(seed, step, rank)``: the
tiles and augmentations of step ``s`` come from :class:`TileSampler`, and the
latent noise of step ``s`` from a generator re-seeded at that step, so
training 4 steps straight or 2 + ``--resume`` 2 gives identical weights.

Multi-process: ``torchrun --no-python --nproc_per_node N astrosr train ...``
(DistributedDataParallel, gloo on CPU, nccl on GPU); rank 0 validates and
writes every file.
"""

import csv
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from . import __version__
from .checkpoint import load_checkpoint, save_checkpoint
from .config import from_dict, load_yaml, to_dict
from .dataset import PairsDataset, TileSampler
from .errors import ConfigError, InputError
from .files import atomic_path, make_dir
from .models import MODELS, blur, build_model
from .provenance import hardware, versions
from .validation import describe, image_validation, is_better, load_val_images, tile_validation

__all__ = ["TrainConfig", "load_config", "train", "ssim_loss"]

# Options that only say how to run, not what is trained: they may change on --resume.
RUNTIME_KEYS = ("max_steps", "device", "threads", "num_workers", "val_every", "log_every", "in_memory",
                "max_minutes", "val_images", "progress")


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved in ``config.yaml`` and in every checkpoint).

    Parameters
    ----------
    model : str
        ``'resvae'`` or ``'vae'``.
    model_options : dict
        Keyword options of the model class (``width``, ``asinh_scale``...);
        ``scale`` is taken from the pairs file.
    loss : {'l1', 'mse'}
        Reconstruction loss in the model's intensity space, mean over pixels.
    ssim_weight, consistency_weight : float
        Weights of the optional SSIM and data-consistency terms.
    beta : float
        KL weight; ``kl_warmup`` steps of linear ramp from 0.
    batch : int
        Tiles per step per process.
    crop : int
        Random square crop of the tiles (ORI pixels; 0 = whole tiles).
    max_steps : int
        Optimiser steps; the cosine schedule spans them.
    lr, warmup, min_lr_ratio, weight_decay, grad_clip : float/int
        AdamW and schedule.
    seed : int
    augment : bool
        Random flips / rot90 (the 8 symmetries).
    train_field, val_field : str
        Fields of the pairs file to train and validate on (``val_field: ''``:
        no validation, best.pt is the latest).
    val_every, log_every : int
        Validation / logging period in steps.
    val_images : bool
        Also validate on the whole val images (evaluate's path) when readable.
    flux_threshold : float
        Checkpoint selection: lowest val MSE among validations with val flux
        error <= this (RL n=20's on bench-v1 val, 0.054), else lowest flux error.
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N'
    threads : int
        CPU threads (0: torch's default, divided among local processes).
    num_workers : int
        DataLoader workers.
    in_memory : bool
        Read the training tiles into memory once.
    max_minutes : float
        Stop (and save) after this much wall time (0: no limit).
    progress : bool
        Show a rich progress bar.
    """

    model: str = "resvae"
    model_options: dict[str, Any] = field(default_factory=dict)
    loss: str = "l1"
    ssim_weight: float = 0.0
    consistency_weight: float = 0.0
    beta: float = 0.01
    kl_warmup: int = 200
    batch: int = 16
    crop: int = 0
    max_steps: int = 2000
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    augment: bool = True
    train_field: str = "train"
    val_field: str = "val"
    val_every: int = 250
    log_every: int = 10
    val_images: bool = True
    flux_threshold: float = 0.054
    device: str = "auto"
    threads: int = 0
    num_workers: int = 0
    in_memory: bool = True
    max_minutes: float = 0.0
    progress: bool = True

    def __post_init__(self):
        if self.model not in MODELS:
            raise ConfigError(f"model: expected one of {', '.join(MODELS)}, got {self.model!r}")
        if self.loss not in ("l1", "mse"):
            raise ConfigError(f"loss: expected 'l1' or 'mse', got {self.loss!r}")
        for key in ("batch", "max_steps", "val_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("warmup", "kl_warmup", "crop", "threads", "num_workers", "seed"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("ssim_weight", "consistency_weight", "beta", "weight_decay", "grad_clip", "max_minutes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if "scale" in self.model_options:
            raise ConfigError("model_options.scale: set by the pairs file (prepare --scale), not here")


def load_config(path=None, overrides=None):
    """A :class:`TrainConfig` from a YAML file (flat, or under a ``train:`` key) plus overrides.

    ``overrides`` maps keys (dotted for model options: ``model_options.width``)
    to values; unknown keys and wrong types are ConfigErrors naming the key.
    """
    data = load_yaml(path) if path else {}
    if set(data) == {"train"}:
        data = data["train"] or {}
    data = dict(data)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("model_options."):
            options = dict(data.get("model_options") or {})
            options[key.split(".", 1)[1]] = value
            data["model_options"] = options
        else:
            data[key] = value
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as exc:
        # name where the bad key came from: the YAML file, or an option / --set on the command line
        message = str(exc).removeprefix(f"{TrainConfig.__name__}: ")
        key = message.replace(":", " ").split(" ", 1)[0]
        given = {k for k, v in (overrides or {}).items() if v is not None}
        source = "command line" if key in given else (str(path) if path else "train config")
        raise ConfigError(f"{source}: {message}") from None


# --- losses ------------------------------------------------------------------


def ssim_loss(x, y):
    """Mean SSIM of ``(B, 1, H, W)`` batches, data range 1, 7x7 uniform window (as skimage's default)."""
    k, n = 7, 49
    c1, c2 = 0.01**2, 0.03**2

    def mean(t):
        return F.avg_pool2d(t, k, stride=1)

    mx, my = mean(x), mean(y)
    cov = n / (n - 1)
    vx, vy, vxy = cov * (mean(x * x) - mx * mx), cov * (mean(y * y) - my * my), cov * (mean(x * y) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def _losses(model, raw, batch, cfg, step):
    """Total loss and its terms for one batch."""
    blu, ori, psf, cond = batch["blu"], batch["ori"], batch["psf"], batch["cond"]
    y, kl = model(blu, psf=psf, cond=cond, sample=True)
    recon_fn = F.l1_loss if cfg.loss == "l1" else F.mse_loss
    recon = recon_fn(y, raw.to_intensity(ori))
    beta = cfg.beta * min(1.0, (step + 1) / cfg.kl_warmup) if cfg.kl_warmup else cfg.beta
    loss = recon + beta * kl
    terms = {"recon": recon.item(), "kl": kl.item(), "beta": beta}
    if cfg.ssim_weight or cfg.consistency_weight:
        sr = raw.from_intensity(y)
    if cfg.ssim_weight:
        s = ssim_loss(sr.clamp(0, 1), ori.clamp(0, 1))
        loss = loss + cfg.ssim_weight * (1 - s)
        terms["ssim"] = s.item()
    if cfg.consistency_weight:
        reblurred = blur(sr, psf, scale=raw.scale)
        c = recon_fn(raw.to_intensity(reblurred), raw.to_intensity(blu))
        loss = loss + cfg.consistency_weight * c
        terms["consistency"] = c.item()
    terms["loss"] = loss.item()
    return loss, terms


def _lr_factor(step, cfg):
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --- run state -----------------------------------------------------------------


def _rng_state():
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": list(random.getstate()[1]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _step_seed(seed, step, rank):
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def _distributed():
    """``(rank, world, local_rank)`` from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(cfg, local_rank, world):
    if cfg.device == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        name = cfg.device
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {cfg.device!r} asked for but CUDA is not available")
        return torch.device(f"cuda:{local_rank}" if name == "cuda" and world > 1 else name)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return torch.device("cpu")


def _trained_psf(dataset):
    """The degradation the model trains for, as PSF.to_dict() keys.

    One PSF: its parameters. Several (randomised training data): the shapes
    and FWHM range of the pairs file's config, so HISTORY cards of deblurred
    files name what the model saw, not one arbitrary draw.
    """
    import h5py

    with h5py.File(dataset.path, "r") as f:
        params = json.loads(f["psfs"].attrs.get("params", "[]"))
        config = json.loads(f.attrs.get("config", "{}"))
    fwhm = dataset.tiles["psf_fwhm"]
    if len(params) == 1:
        return params[0]
    return {"shape": str(config.get("psf_shape", "mixed")), "fwhm": float(np.median(fwhm)),
            "beta": config.get("psf_beta"), "fwhm_range": [float(fwhm.min()), float(fwhm.max())]}


class _Log:
    """``metrics.csv`` (one row per logged step) and ``loss_curve.png``, kept by rank 0."""

    COLUMNS = ["step", "lr", "loss", "recon", "kl", "beta", "ssim", "consistency", "tiles_per_s", "elapsed_s",
               "val_tile_ssim", "val_tile_mse", "val_ssim", "val_mse", "val_flux_err", "val_spurious"]

    def __init__(self, out, resume_step=None):
        self.path = out / "metrics.csv"
        self.png = out / "loss_curve.png"
        self.rows = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with atomic_path(self.path, overwrite=True) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self.COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)

    def add(self, row):
        row = {k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]))
               for k in self.COLUMNS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.COLUMNS).writerow(row)

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            pts = [(int(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in ("", None)]
            return list(zip(*pts)) if pts else ([], [])

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*series("loss"), lw=1, label="train loss")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
        twin = ax.twinx()
        for key, style in (("val_mse", "o-"), ("val_tile_mse", "s--")):
            xs, ys = series(key)
            if xs:
                twin.plot(xs, ys, style, color="C3" if key == "val_mse" else "C2", ms=3, label=key.replace("_", " "))
        twin.set_ylabel("val MSE (bench-v1, clipped)")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper right", fontsize=8)
        fig.tight_layout()
        with atomic_path(self.png, overwrite=True) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def _check_resume(cfg, saved):
    """Only runtime options may differ from the checkpoint's training config."""
    for key, value in to_dict(cfg).items():
        if key in RUNTIME_KEYS or key not in saved:
            continue
        if saved[key] != value:
            raise ConfigError(f"{key}: {value!r} differs from the checkpoint's {saved[key]!r}; it cannot change on --resume")


# --- the loop -------------------------------------------------------------------


def train(pairs, config, out, *, resume=False, stop_at=None):
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

    Returns
    -------
    dict
        Summary (also written to ``out/summary.json``): steps, best record,
        last validation, time, device, versions; ``module`` holds the
        trained model.
    """
    cfg = config
    out = Path(out)
    rank, world, local_rank = _distributed()
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        backend = "nccl" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "gloo"
        torch.distributed.init_process_group(backend)
    device = _device(cfg, local_rank, world)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    main = rank == 0

    last_path = out / "last.pt"
    saved = None
    if resume:
        if not last_path.is_file():
            raise InputError(f"{last_path}: nothing to resume (no last.pt in {out})")
        saved = load_checkpoint(last_path)
        _check_resume(cfg, saved.get("train_config", {}))
    elif last_path.exists() or (out / "best.pt").exists():
        raise InputError(f"{out}: already holds a run (use --resume to continue it, or another --out)")

    train_set = PairsDataset(pairs, field=cfg.train_field, in_memory=cfg.in_memory, augment=cfg.augment,
                             crop=cfg.crop or None)
    val_set = PairsDataset(pairs, field=cfg.val_field, in_memory=True) if main and cfg.val_field else None

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    raw = build_model(cfg.model, dict(cfg.model_options, scale=train_set.scale)).to(device)
    no_decay = [p for n, p in raw.named_parameters() if p.ndim <= 1]
    decay = [p for n, p in raw.named_parameters() if p.ndim > 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    step, best, last_val = 0, None, None
    if saved is not None:
        raw.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, best = int(saved["step"]), saved.get("best")
        last_val = saved.get("last_val")
        _set_rng_state(saved["rng"])
    model = raw
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = TileSampler(len(train_set), batch=cfg.batch, seed=cfg.seed, rank=rank, world=world, start_step=step)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch, sampler=sampler,
                                         num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    batches = iter(loader)

    val_images, val_note = None, "disabled (val_images: false)"
    if main:
        make_dir(out)
        if val_set is None:
            val_note = "no validation (val_field is empty): best.pt is the latest"
        elif cfg.val_images:
            val_images, val_note = load_val_images(val_set, field=cfg.val_field)
        with atomic_path(out / "config.yaml", overwrite=True) as tmp:
            tmp.write_text(f"# astrosr {__version__} train config; pairs: {Path(pairs).resolve()}\n"
                           + yaml.safe_dump(to_dict(cfg), sort_keys=False))
        log = _Log(out, resume_step=step if resume else None)
    tile = raw.native_tile or 512  # restore_image's default: validation scores what evaluate scores
    psf_record = _trained_psf(train_set)
    last_step = min(cfg.max_steps, stop_at or cfg.max_steps)

    def checkpoint(path):
        save_checkpoint(path, {
            "model": cfg.model, "model_config": dict(raw.config),
            "state_dict": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
            "step": step, "best": best, "last_val": last_val, "train_config": to_dict(cfg), "psf": psf_record,
            "data": {"pairs": str(Path(pairs).resolve()), "train_tiles": len(train_set),
                     "val_tiles": len(val_set) if val_set is not None else None},
            "astrosr_version": __version__,
        })

    def validate():
        if val_set is None:
            return {"step": step}
        record = {"step": step, **tile_validation(raw, val_set, device=device)}
        if val_images:
            record.update(image_validation(raw, val_images, device=device, tile=tile))
        raw.train()
        return record

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("train {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tiles/s"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not (main and cfg.progress))
    task = bar.add_task("train", total=last_step, completed=step, name=cfg.model, loss="-", speed="-")
    start_time = time.perf_counter()
    window_time, window_tiles = start_time, 0
    raw.train()
    try:
        with bar:
            while step < last_step:
                batch = next(batches)
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                torch.manual_seed(_step_seed(cfg.seed, step, rank))
                loss, terms = _losses(model, raw, batch, cfg, step)
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
                validating = step % cfg.val_every == 0 or step == last_step
                over_time = cfg.max_minutes and time.perf_counter() - start_time > 60 * cfg.max_minutes
                if distributed and cfg.max_minutes:
                    flag = torch.tensor([float(bool(over_time))], device=device)
                    torch.distributed.all_reduce(flag)
                    over_time = flag.item() > 0
                if over_time:
                    validating = True
                if main and (validating or step % cfg.log_every == 0):
                    now = time.perf_counter()
                    speed = window_tiles / max(now - window_time, 1e-9)
                    window_time, window_tiles = now, 0
                    row = {"step": step, "lr": scheduler.get_last_lr()[0], "tiles_per_s": speed,
                           "elapsed_s": now - start_time, **terms}
                    if validating:
                        last_val = validate()
                        row.update({f"val_{k}": v for k, v in last_val.items() if k != "step"})
                        if is_better(last_val, best, flux_threshold=cfg.flux_threshold):
                            best = last_val
                            checkpoint(out / "best.pt")
                        checkpoint(last_path)
                        bar.console.log(f"step {step}: val {describe(last_val)}")
                        window_time = time.perf_counter()  # throughput counts training only
                    log.add(row)
                    bar.update(task, completed=step, loss=f"{terms['loss']:.4g}", speed=f"{speed:.1f}")
                if distributed and validating:
                    torch.distributed.barrier()
                if over_time:
                    break
    except KeyboardInterrupt:
        if main and step > 0:
            checkpoint(last_path)
        raise
    elapsed = time.perf_counter() - start_time
    summary = {
        "pairs": str(Path(pairs).resolve()), "steps": step, "max_steps": cfg.max_steps, "best": best, "last_val": last_val,
        "val_images": val_note or "whole val images scored with evaluate's path",
        "seconds": elapsed, "world_size": world, "device": str(device), "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in raw.parameters()), "model": cfg.model, "model_config": raw.config,
        "train_tiles": len(train_set), "versions": versions(), "hardware": hardware(device),
    }
    if main:
        log.plot()
        with atomic_path(out / "summary.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if distributed:
        torch.distributed.barrier()
    summary["module"] = raw
    return summary
