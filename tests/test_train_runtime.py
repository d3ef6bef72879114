"""train_runtime: single-process defaults, CPU device, random state round trip, step seeds, resume checks."""

import random

import numpy as np
import pytest
import torch

from astrosr.checkpoint import save_checkpoint
from astrosr.errors import ConfigError, InputError
from astrosr.train_runtime import (init_processes, out_of_time, resume_point, rng_state, select_device,
                                   set_rng_state, step_seed)


def test_single_process_and_cpu(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert init_processes("cpu") == (0, 1, 0)
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: 'cuda' asked for but CUDA is not available"):
            select_device("cuda")


def test_rng_state_round_trip():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_step_seeds_and_time_limit():
    seeds = {step_seed(0, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and step_seed(2, 0, 0) == 2_000_006
    assert not out_of_time(0.0, 0) and out_of_time(0.0, 1e-12)


def test_resume_point(tmp_path):
    assert resume_point(tmp_path / "new", False, {}) is None
    with pytest.raises(InputError, match="resume: nothing to resume in .*new"):
        resume_point(tmp_path / "new", True, {})
    save_checkpoint(tmp_path / "last.pt", {"model": "resvae", "model_config": {}, "state_dict": {},
                                           "train_config": {"lr": 0.1, "max_steps": 5}})
    with pytest.raises(InputError, match="already holds a run"):
        resume_point(tmp_path, False, {})
    assert resume_point(tmp_path, True, {"lr": 0.1, "max_steps": 9}, runtime_keys=("max_steps",))["model"] == "resvae"
    with pytest.raises(ConfigError, match=r"^lr: 0.2 differs from the checkpoint's 0.1"):
        resume_point(tmp_path, True, {"lr": 0.2})
