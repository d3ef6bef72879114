"""Shared fixtures: the real FITS files of ../shared/data/fits and small generated images."""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir():
    env = os.environ.get("ASTROSR_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "fits"


@pytest.fixture(scope="session")
def data_dir():
    """Directory holding the real bench-v1 FITS files (ASTROSR_DATA_DIR or ../shared/data/fits)."""
    path = _data_dir()
    if not (path / "synth.fits").is_file():
        pytest.fail(f"real data not found in {path}; set ASTROSR_DATA_DIR")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def tiny_pairs(data_dir, tmp_path_factory):
    """A small pairs file (16 train + 4 val real tiles) written straight from the schema."""
    from _pairs import make_pairs

    return make_pairs(tmp_path_factory.mktemp("pairs") / "tiny.h5", data_dir)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Generated data (the simulated field of a manifest) goes to a session temp dir, not ~/.cache."""
    if os.environ.get("ASTROSR_CACHE_DIR"):
        yield
        return
    os.environ["ASTROSR_CACHE_DIR"] = str(tmp_path_factory.mktemp("astrosr_cache"))
    yield
    os.environ.pop("ASTROSR_CACHE_DIR", None)


@pytest.fixture(scope="session", autouse=True)
def _no_bm3d():
    """BM3D costs a minute per megapixel: where the peers extra is installed, evaluate still skips its row in
    tests (session-wide, so module fixtures see it too); the BM3D tests call it, or stand it in, themselves."""
    from astrosr import baselines

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baselines, "bm3d_available", lambda: False)
        yield


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two OpenMP threads mostly wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
