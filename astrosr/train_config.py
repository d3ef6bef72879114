"""What decides a training run: :class:`TrainConfig` (the library argument, a YAML file, the pipeline's
``train:`` models and the ``astrosr train`` flags) and :func:`load_config`.

Kept apart from :mod:`astrosr.train` so that reading options (the CLI's
``-h``, a pipeline file) does not import torch.

Examples
--------
>>> from astrosr.train_config import load_config
>>> load_config(overrides={"max_steps": 300, "model_options.width": 8}).model_options
{'width': 8}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import from_dict, load_yaml, option
from .errors import ConfigError

__all__ = ["TrainConfig", "RUNTIME_KEYS", "load_config"]

# Options that only say how to run, not what is trained: they may change when a run is resumed.
RUNTIME_KEYS = ("max_steps", "device", "threads", "num_workers", "val_every", "log_every", "in_memory",
                "max_minutes", "val_images", "progress")


@dataclass(frozen=True)
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
    source_weight : float
        A noise head's NLL weighs ORI's source pixels (5 s above the tile's
        median) ``1 + source_weight`` times a sky pixel (0: all alike).
    prior_weight : float
        A conditional model's KL balancing: the weight of the KL that moves
        only its prior towards the posterior (0: the prior learns only
        through ``beta``'s term).
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
    train_field : str or list of str
        Field(s) of the pairs file to train on (a list: their tiles together).
    val_field : str
        Field to validate on (``''``: no validation, best.pt is the latest).
    val_every, log_every : int
        Validation / logging period in steps.
    val_images : bool
        Also validate on the whole val images (evaluate's path) when readable.
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N'
    threads : int
        CPU threads (0: torch's default, divided among local processes).
    num_workers : int
        DataLoader workers.
    in_memory : bool
        Read the training tiles into memory once.
    init : str or None
        Start from these weights (a ``.pt`` / ``.safetensors`` file or
        ``'default'``) instead of a fresh initialisation: fine-tuning. The
        model and its options must be the weights' own.
    fresh : list of str or None
        With ``init``: the parameters whose names start with one of these
        start fresh although ``init`` holds them, e.g. ``[scale_head]``, a
        new noise head on the shipped restoration (the same initial weights
        as a head that ``init`` lacked).
    max_minutes : float
        Stop (and save) after this much wall time (0: no limit).
    trainable : list of str or None
        Train only the parameters whose names start with one of these
        (others frozen): e.g. ``[to_mu, to_logvar, scale_head]`` fits a
        conditional model's prior and noise head to a restoration left
        exactly as it is. None: all.
    uncertainty_samples : int
        Posterior draws per val image to calibrate the uncertainty of a
        sampling model at the end of training (:mod:`astrosr.uncertainty`;
        the scale goes into ``best.pt``); 0: not calibrated.
    progress : bool
        Whether ``astrosr train`` shows a progress bar (:func:`train` itself
        never draws one: it reports to its ``progress`` callback).

    Examples
    --------
    >>> from astrosr.config import from_dict
    >>> from astrosr.train_config import TrainConfig
    >>> config = TrainConfig(max_steps=300, model_options={"width": 8})
    >>> config.model, config.batch, config.lr, config.max_steps
    ('resvae', 16, 0.002, 300)
    >>> TrainConfig(loss="huber")
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: loss: expected 'l1' or 'mse', got 'huber'
    >>> from_dict(TrainConfig, {"lr": "fast"}, where="train")  # a YAML section is checked key by key
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: train.lr: expected float, got 'fast'
    """

    model: str = option("resvae", help="Model family: resvae or vae [resvae].")
    model_options: dict[str, Any] = field(default_factory=dict)
    loss: str = "l1"
    ssim_weight: float = 0.0
    consistency_weight: float = 0.0
    source_weight: float = 0.0
    beta: float = 0.01
    prior_weight: float = 1.0
    kl_warmup: int = 200
    batch: int = option(16, minimum=1, help="Tiles per step per process [16].")
    crop: int = 0
    max_steps: int = option(2000, minimum=1, help="Optimiser steps (the LR schedule spans them) [2000].")
    lr: float = option(2e-3, help="Peak learning rate [0.002].")
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = option(0, minimum=0, help="Seed of every random choice [0].")
    augment: bool = True
    train_field: str | list[str] = "train"
    val_field: str = "val"
    val_every: int = 250
    log_every: int = 10
    val_images: bool = True
    device: str = option("auto", help="auto, cpu, cuda or cuda:N [auto].")
    threads: int = option(0, minimum=0, help="CPU threads (0: torch's default) [0].")
    num_workers: int = option(0, minimum=0, flag="--workers", help="DataLoader worker processes [0].")
    in_memory: bool = True
    max_minutes: float = 0.0
    progress: bool = option(True, help="No progress bar.")
    init: str | None = option(None, help="Start from these weights (.pt/.safetensors or 'default'): fine-tune.")
    uncertainty_samples: int = 16
    trainable: list[str] | None = None
    fresh: list[str] | None = None

    @property
    def train_fields(self) -> list[str]:
        """``train_field`` as a list."""
        return [self.train_field] if isinstance(self.train_field, str) else list(self.train_field)

    def __post_init__(self):
        from .models import MODELS  # torch, only once a config is built

        if self.model not in MODELS:
            raise ConfigError(f"model: expected one of {', '.join(MODELS)}, got {self.model!r}")
        if self.loss not in ("l1", "mse"):
            raise ConfigError(f"loss: expected 'l1' or 'mse', got {self.loss!r}")
        for key in ("batch", "max_steps", "val_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("warmup", "kl_warmup", "crop", "threads", "num_workers", "seed", "ssim_weight", "uncertainty_samples",
                    "consistency_weight", "source_weight", "beta", "prior_weight", "weight_decay", "grad_clip", "max_minutes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.fresh is not None and not self.init:
            raise ConfigError(f"fresh: {self.fresh} needs init (the weights the rest starts from)")
        if self.fresh and self.trainable is not None:
            # a part restarted at random and then frozen would ship random weights
            frozen = [f for f in self.fresh if not f.startswith(tuple(self.trainable))]
            if frozen:
                raise ConfigError(f"fresh: {frozen} start at random but are not trainable ({self.trainable})")
        if "scale" in self.model_options:
            raise ConfigError("model_options.scale: set by the pairs file (its prepare scale), not here")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (flat, or under a ``train:`` key) plus overrides.

    ``overrides`` maps keys (dotted for model options: ``model_options.width``)
    to values (None: not given); unknown keys and wrong types are
    ConfigErrors naming the key and where it came from.

    Examples
    --------
    >>> load_config(None, {"model": "vae", "model_options.latent": 16, "seed": None}).model_options
    {'latent': 16}
    >>> load_config(None, {"bach": 3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: command line: bach: unknown key (known: augment, batch, ...)
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
