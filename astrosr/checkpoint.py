"""Checkpoints and model files: plain dicts written atomically, read without code execution.

Kept together as one module: saving, loading, exporting and caching a model,
and choosing the device it runs on, share one notion of a model file.

A checkpoint (``best.pt`` / ``last.pt``) is a plain dict of tensors, numbers,
strings, lists and dicts::

    {model, model_config, state_dict, optimizer, scheduler, rng, step, best,
     train_config, psf, astrosr_version}

It is read only with ``torch.load(weights_only=True)``, so a malicious pickle
cannot run code, and written to a temporary file renamed on success, so a
killed save leaves the previous file intact. ``export_model`` writes the
weights alone as ``.safetensors`` with a sibling ``.json`` config, which
:func:`load_model` accepts as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import CheckpointError, ConfigError
from .files import atomic_path, sha256_file
from .models import MODELS

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_model_cached",
    "clear_model_cache",
    "export_model",
    "DEFAULT_WEIGHTS", "resolve_device"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.safetensors"
REQUIRED_KEYS = ("model", "model_config", "state_dict")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (a plain dict) to ``path`` atomically (temp file + rename).

    An existing file is replaced only once the new one is complete, so a
    killed save leaves the previous checkpoint intact.

    Parameters
    ----------
    path : str or Path
        Output file (``best.pt`` / ``last.pt``).
    payload : dict
        Tensors, numbers, strings, lists and dicts only (what
        :func:`load_checkpoint` reads back with ``weights_only=True``); at least
        ``model``, ``model_config`` and ``state_dict``.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.checkpoint import load_model, save_checkpoint
    >>> model, info = load_model("default")
    >>> payload = {"model": info["model"], "model_config": info["model_config"],
    ...            "state_dict": model.state_dict(), "step": 0}
    >>> save_checkpoint(Path(tempfile.mkdtemp()) / "best.pt", payload).name
    'best.pt'
    """
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _check_payload(path, payload):
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not an astrosr checkpoint (expected a dict with {', '.join(REQUIRED_KEYS)})")
    if payload["model"] not in MODELS:
        raise CheckpointError(f"{path}: unknown model {payload['model']!r} (known: {', '.join(MODELS)})")
    if not isinstance(payload["model_config"], dict):
        raise CheckpointError(f"{path}: model_config is not a mapping")


def _load_failure(path, exc):
    """A short reason for a failed ``torch.load``; torch's own text advises weights_only=False, never safe here."""
    import pickle
    import zipfile

    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # torch's legacy format and bare pickles start with PROTO
    if not (zipfile.is_zipfile(path) or pickled):
        return "truncated, corrupt or not a PyTorch file"
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        return "it holds Python objects other than tensors and plain data; refused without running them"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return reason[:120]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path`` (tensors on CPU); any bad file is a one-line CheckpointError.

    The file is read with ``torch.load(weights_only=True)``: a file holding
    other Python objects is refused without running them.

    Parameters
    ----------
    path : str or Path
        A checkpoint written by :func:`save_checkpoint` (or by training).

    Returns
    -------
    dict
        At least ``model``, ``model_config`` and ``state_dict``.

    Raises
    ------
    CheckpointError
        Missing, truncated or corrupt file, foreign content, unknown model.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.checkpoint import load_checkpoint, load_model, save_checkpoint
    >>> model, info = load_model("default")
    >>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "best.pt",
    ...                        {"model": "resvae", "model_config": info["model_config"],
    ...                         "state_dict": model.state_dict(), "step": 7})
    >>> payload = load_checkpoint(path)
    >>> sorted(payload), payload["step"]
    (['model', 'model_config', 'state_dict', 'step'], 7)
    >>> load_checkpoint(path.with_name("missing.pt"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.CheckpointError: ...missing.pt: checkpoint not found
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, a pickle with code: all the same to a user
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_failure(path, exc)})") from None
    _check_payload(path, payload)
    return payload


def _load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise CheckpointError(f"{path}: no sibling config {sidecar.name} (write both with `astrosr export`)")
    try:
        config = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{sidecar}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{sidecar}: not an astrosr model config (expected a JSON object, got {type(config).__name__})")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    payload = dict(config)
    payload["state_dict"] = state
    _check_payload(sidecar, payload)
    return payload


def load_model(path: str | os.PathLike, *,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model stored at ``path`` and load its weights, in eval mode.

    Parameters
    ----------
    path : str or Path
        A training checkpoint (``.pt``), an exported ``.safetensors`` file with
        its sibling ``.json``, or ``'default'`` (the shipped weights).
    device : str or torch.device

    Returns
    -------
    model : torch.nn.Module
    info : dict
        ``path``, ``sha256`` (of the weights file), ``model``, ``model_config``,
        ``psf`` (the PSF it was trained for, if recorded), ``step``,
        ``astrosr_version``, ``uncertainty`` (its calibration, if any: the
        model's ``uncertainty_scale`` attribute is set from it).

    Raises
    ------
    CheckpointError
        A missing or unreadable file, or weights that do not fit the config.

    Examples
    --------
    >>> from astrosr.checkpoint import load_model
    >>> model, info = load_model("default")
    >>> type(model).__name__, model.training, info["model"]
    ('ResVAE', False, 'resvae')
    >>> model, info = load_model("runs/quickstart/train/resvae/best.pt", device="cuda")  # doctest: +SKIP
    """
    if str(path) == "default":
        if not DEFAULT_WEIGHTS.is_file():
            raise CheckpointError(f"{DEFAULT_WEIGHTS}: no default weights shipped with this install")
        path = DEFAULT_WEIGHTS
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    payload = _load_safetensors(path) if path.suffix == ".safetensors" else load_checkpoint(path)
    try:
        model = MODELS[payload["model"]](**payload["model_config"])
    except Exception as exc:
        raise CheckpointError(f"{path}: model_config does not build a {payload['model']} ({exc})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the {payload['model']} config ({reason[:200]})") from None
    model.to(device).eval()
    uncertainty = payload.get("uncertainty") or {}
    # the val-calibrated multiplier of the draws' std (astrosr.uncertainty); 1 for a model never calibrated
    model.uncertainty_scale = float(uncertainty.get("scale", 1.0))
    info = {
        "path": str(path),
        "sha256": sha256_file(path),
        "model": payload["model"],
        "model_config": dict(payload["model_config"]),
        "psf": payload.get("psf"),
        "step": payload.get("step"),
        "astrosr_version": payload.get("astrosr_version"),
        "uncertainty": payload.get("uncertainty"),
    }
    return model, info


#: (path, device, (size, mtime_ns) of the file) -> (model, info); at most one entry
_MODEL_CACHE = {}


def resolve_device(device: str | torch.device | None) -> str:
    """The torch device to run on: ``'auto'`` (or None) is CUDA when a GPU is visible, else the CPU.

    A device this machine does not have is an error naming the ``device``
    option, before any work: ``'cuda'`` on a CPU-only torch, ``'cuda:3'``
    with two GPUs, ``'mps'`` off Apple silicon.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("auto") in ("cpu", "cuda")
    True
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'
    """
    from .config import check_device

    name = check_device("auto" if device is None else str(device))
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} asked for but CUDA is not available (torch {torch.__version__})")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r} asked for but this machine has {torch.cuda.device_count()} GPU(s)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device: 'mps' asked for but the Metal backend is not available")
    return name


def load_model_cached(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """:func:`load_model`, kept once per process: a batch worker loads its model once, not per image.

    The key is the path, the device and the file's size and modification
    time, so a model retrained under the same name is loaded again. Only
    the last model is kept (a batch uses one; two would double the memory).
    The model returned is shared by every caller: use it, do not train it.

    Examples
    --------
    >>> from astrosr.checkpoint import load_model_cached
    >>> model, info = load_model_cached("default")
    >>> load_model_cached("default")[0] is model
    True
    """
    path = str(path)
    stat = os.stat(path) if os.path.isfile(path) else None
    key = (path, device, (stat.st_size, stat.st_mtime_ns) if stat else None)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(path, device=device)
    return _MODEL_CACHE[key]


def clear_model_cache() -> None:
    """Drop the model :func:`load_model_cached` keeps (before handing the work to other processes).

    Examples
    --------
    >>> from astrosr.checkpoint import clear_model_cache, load_model_cached
    >>> model, _ = load_model_cached("default")
    >>> clear_model_cache()
    >>> load_model_cached("default")[0] is model  # loaded afresh
    False
    """
    _MODEL_CACHE.clear()


def export_model(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, name: str = "model",
                 overwrite: bool = False) -> Path:
    """Write a checkpoint's weights as ``OUT/<name>.safetensors`` + ``OUT/<name>.json``.

    The JSON holds everything :func:`load_model` needs (model name and
    config) plus provenance: the PSF, step, best validation, training config
    and the sha256 of the source checkpoint. Both files are written atomically.

    Parameters
    ----------
    checkpoint : str or Path
        A training checkpoint (``best.pt`` / ``last.pt``).
    out_dir : str or Path
        Output directory (created if needed).
    name : str
        Stem of the two files.
    overwrite : bool
        Replace existing files (otherwise an :class:`~astrosr.errors.InputError`).

    Returns
    -------
    Path
        The ``.safetensors`` path.

    Raises
    ------
    CheckpointError
        ``checkpoint`` is not a readable checkpoint.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.checkpoint import export_model, load_model, save_checkpoint
    >>> model, info = load_model("default")
    >>> out = Path(tempfile.mkdtemp())
    >>> ckpt = save_checkpoint(out / "best.pt", {"model": "resvae", "model_config": info["model_config"],
    ...                                          "state_dict": model.state_dict(), "step": 7})
    >>> weights = export_model(ckpt, out / "export")
    >>> sorted(p.name for p in weights.parent.iterdir())
    ['model.json', 'model.safetensors']
    >>> load_model(weights)[1]["step"]
    7
    """
    from safetensors.torch import save_file

    checkpoint = Path(checkpoint)
    payload = load_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    weights, sidecar = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    config = {
        "model": payload["model"],
        "model_config": payload["model_config"],
        "psf": payload.get("psf"),
        "step": payload.get("step"),
        "best": payload.get("best"),
        "train_config": payload.get("train_config"),
        "uncertainty": payload.get("uncertainty"),
        "source": {"path": os.fspath(checkpoint), "sha256": sha256_file(checkpoint)},
        "astrosr_version": payload.get("astrosr_version", __version__),
    }
    state = {k: v.detach().contiguous() for k, v in payload["state_dict"].items()}
    with atomic_path(weights, overwrite=overwrite) as tmp:
        save_file(state, os.fspath(tmp), metadata={"model": payload["model"], "format": "astrosr"})
        # safetensors creates its file 0600; give it the permissions every other output gets (umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with atomic_path(sidecar, overwrite=overwrite) as tmp_json:
            tmp_json.write_text(json.dumps(config, indent=2, default=str) + "\n")
    return weights
