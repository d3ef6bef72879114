"""Where a training run executes and how it continues exactly: processes, device, random state, resuming.

Multi-process runs are started by ``torchrun`` (``torchrun --no-python
--nproc_per_node N astrosr train ...``), which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; the process group uses nccl on
GPUs and gloo on CPUs.

Every random choice of a step is a function of ``(seed, step, rank)``: the
loop re-seeds torch with :func:`step_seed` before each step, and a
checkpoint carries :func:`rng_state` so a resumed run continues exactly
(:func:`resume_point`).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .errors import ConfigError, InputError

__all__ = ["init_processes", "select_device", "seed_everything", "step_seed", "rng_state", "set_rng_state",
           "out_of_time", "resume_point"]


def init_processes(device: str = "auto") -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from torchrun's environment; joins the process group when ``world > 1``.

    ``device`` (a ``TrainConfig.device`` value) picks the backend: nccl for
    CUDA, gloo otherwise. A single process (no torchrun) is ``(0, 1, 0)``.
    """
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return rank, world, local_rank


def select_device(device: str, *, threads: int = 0, local_rank: int = 0, world: int = 1) -> torch.device:
    """The torch device of this process, made current; on CPU, sets the thread count.

    Parameters
    ----------
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N'
        ``auto``: CUDA when available. Plain ``cuda`` with several processes
        means each process's ``cuda:<local_rank>``.
    threads : int
        CPU threads (0: torch's default, shared out among this machine's processes).
    local_rank, world : int

    Raises
    ------
    ConfigError
        ``device`` asks for CUDA and there is none.

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    """
    from .checkpoint import resolve_device

    name = resolve_device(device)  # the one check that this machine has the device asked for
    if name.startswith("cuda"):
        chosen = torch.device(f"cuda:{local_rank}" if name == "cuda" and world > 1 else name)
        if chosen.index is not None:
            torch.cuda.set_device(chosen)
        return chosen
    if threads:
        torch.set_num_threads(threads)
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator and python's ``random`` (model initialisation)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of optimiser step ``step`` on process ``rank`` (the latent noise of that step).

    Examples
    --------
    >>> step_seed(0, 1, 0), step_seed(0, 0, 1)
    (7919, 104729)
    """
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def rng_state() -> dict:
    """Every global generator's state as tensors and plain data (checkpoint-safe: ``weights_only`` loads it)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": list(random.getstate()[1]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def out_of_time(start: float, max_minutes: float, *, distributed: bool = False, device: torch.device | None = None) -> bool:
    """Whether ``max_minutes`` (0: no limit) have passed since ``start`` (``time.perf_counter()``).

    With several processes, all of them get the same answer (true when any
    process is over time), so they stop at the same step.
    """
    if not max_minutes:
        return False
    over = time.perf_counter() - start > 60 * max_minutes
    if distributed:
        flag = torch.tensor([float(over)], device=device)
        torch.distributed.all_reduce(flag)
        over = flag.item() > 0
    return over


def resume_point(out: str | Path, resume: bool, config: dict, *, runtime_keys: tuple[str, ...] = ()) -> dict | None:
    """The checkpoint ``out/last.pt`` to continue from, or None for a fresh run.

    Parameters
    ----------
    out : str or Path
        Run directory.
    resume : bool
        Continue the run in ``out``; without it ``out`` must not hold one
        (``last.pt`` or ``best.pt``).
    config : dict
        The training config as plain data; every key but ``runtime_keys``
        must equal the checkpoint's ``train_config``.
    runtime_keys : tuple of str
        Options that say how to run, not what is trained.

    Raises
    ------
    InputError
        A fresh run into a run directory, or nothing to resume.
    ConfigError
        Naming the first option that differs from the checkpoint's.
    CheckpointError
        An unreadable ``last.pt``.
    """
    out = Path(out)
    last = out / "last.pt"
    if not resume:
        if last.exists() or (out / "best.pt").exists():
            raise InputError(f"{out}: already holds a run (resume it, or train into another directory)")
        return None
    if not last.is_file():
        raise InputError(f"resume: nothing to resume in {out} (no last.pt)")
    saved = load_checkpoint(last)
    before = saved.get("train_config", {})
    for key, value in config.items():
        if key not in runtime_keys and key in before and before[key] != value:
            raise ConfigError(f"{key}: {value!r} differs from the checkpoint's {before[key]!r}; it cannot change on --resume")
    return saved
