"""Stage options: frozen dataclasses loaded from YAML, checked key by key, shown as CLI flags.

Every stage's options are one dataclass beside the stage's function
(``PrepareOptions``, ``TrainConfig``, ``EvaluateOptions``, ``DeblurOptions``).
That one class is the library argument, the stage's section of a pipeline
YAML and the stage's CLI flags:

- :func:`from_dict` builds it from a mapping (a YAML section, the flags a user
  gave), rejecting unknown keys and wrong types with an error that names the
  key, e.g. ``train.lr: expected float, got 'fast'``;
- :func:`option` declares a field with the help text (and, where it is not
  ``--<key>``, the flag) the CLI shows for it, so the CLI builds its options
  from the class instead of repeating them.

Library errors name option keys (``samples: must be >= 0``); only the CLI
turns keys into flag names.

Examples
--------
>>> from dataclasses import dataclass
>>> from astrosr.config import from_dict, option
>>> @dataclass(frozen=True)
... class Demo:
...     samples: int = option(0, help="Posterior draws.")
>>> from_dict(Demo, {"samples": 4})
Demo(samples=4)
>>> from_dict(Demo, {"sample": 4})
Traceback (most recent call last):
...
astrosr.errors.ConfigError: sample: unknown key (known: samples)
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["option", "check_options", "check_device", "from_dict", "load_yaml", "to_dict", "replace"]


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,
           default_factory: Any = dataclasses.MISSING, cli: bool = True, minimum: float | None = None,
           choices: tuple[str, ...] | None = None, ranges: bool = False) -> Any:
    """A dataclass field that also says how the CLI shows it.

    Parameters
    ----------
    default, default_factory
        As :func:`dataclasses.field`.
    help : str
        One line for ``-h``.
    flag : str, optional
        The CLI flag when it is not ``--<key with dashes>`` (a True-by-default
        bool is ``--no-<key>``).
    cli : bool
        False keeps the key out of the CLI (pipeline- or API-only keys).
    minimum : float, optional
        Smallest allowed value of a number (the CLI checks it too).
    choices : tuple of str, optional
        The allowed values of a string.
    ranges : bool
        A PSF field that takes ranges and shape lists (training data): the CLI's help says so.

    ``minimum`` and ``choices`` are enforced where the class's
    ``__post_init__`` calls :func:`check_options` (every stage's options do).

    Examples
    --------
    >>> import dataclasses
    >>> from astrosr.config import check_options, option
    >>> @dataclasses.dataclass(frozen=True)
    ... class Demo:
    ...     samples: int = option(0, minimum=0, help="Posterior draws.")
    ...     device: str = option("cpu", choices=("cpu", "cuda"), flag="--on", help="Device.")
    ...     def __post_init__(self):
    ...         check_options(self)
    >>> dataclasses.fields(Demo)[1].metadata["flag"], Demo().samples
    ('--on', 0)
    >>> Demo(device="tpu")
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: device: expected one of cpu, cuda, got 'tpu'
    """
    metadata = {"help": help, "flag": flag, "cli": cli, "minimum": minimum, "choices": choices, "ranges": ranges}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


#: the device names astrosr accepts (whether this machine has it is checked when a model is loaded)
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def check_device(device: str, key: str = "device") -> str:
    """``device`` if it names a torch device astrosr runs on, else a ConfigError naming ``key``.

    Examples
    --------
    >>> check_device("cuda:1")
    'cuda:1'
    """
    if not isinstance(device, str) or not DEVICE.match(device):
        raise ConfigError(f"{key}: expected auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def check_options(options: Any) -> None:
    """The ``minimum`` and ``choices`` of every :func:`option` field of a dataclass instance."""
    for f in dataclasses.fields(options):
        value, meta = getattr(options, f.name), f.metadata
        if value is None or not meta:
            continue
        if meta.get("minimum") is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value < meta["minimum"]:
            raise ConfigError(f"{f.name}: must be >= {meta['minimum']:g}, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{f.name}: expected one of {', '.join(meta['choices'])}, got {value!r}")


def _check(value, kind, key):
    """Return ``value`` converted to ``kind`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(kind)
    if kind is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(kind) or (typing.Any,)
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where=key)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is str and isinstance(value, os.PathLike):  # a Path from the API is a path in the YAML
        return os.fspath(value)
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{key}: expected {name}, got {value!r}")


def from_dict(cls: type, data: dict | None, *, where: str = "", build: bool = True) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Parameters
    ----------
    cls : dataclass type
    data : mapping or None
        Keys are field names; missing keys keep their defaults.
    where : str
        Prefix for error messages (the YAML section), e.g. ``'train'``.
    build : bool
        A class with its own ``from_keys(data, where=...)`` (the PSF, whose
        keys depend on its shape) is built by it unless False.

    Returns
    -------
    object
        An instance of ``cls`` (``data`` itself when it already is one).

    Raises
    ------
    ConfigError
        An unknown key, a missing required key or a value of the wrong type,
        named ``where.key``.

    Examples
    --------
    >>> from astrosr.config import from_dict
    >>> from astrosr.train_config import TrainConfig
    >>> config = from_dict(TrainConfig, {"max_steps": 300, "lr": 1})  # an int where a float is expected is fine
    >>> config.max_steps, config.lr
    (300, 1.0)
    >>> from_dict(TrainConfig, {"max_steps": "300"}, where="train")
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: train.max_steps: expected int, got '300'
    """
    if isinstance(data, cls):
        return data
    if build and hasattr(cls, "from_keys"):
        return cls.from_keys(data, where=where or "psf")
    data = {} if data is None else data
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in data]
    if required:
        raise ConfigError(f"{prefix}{required[0]}: required key missing")
    values = {k: _check(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(_located(str(exc), where, fields)) from None


def _located(message: str, where: str, keys) -> str:
    """A class's own error placed in its section: ``noise: ...`` in ``prepare`` is ``prepare.noise: ...``."""
    if not where:
        return message
    last = where.rsplit(".", 1)[-1]
    if message.startswith(f"{where}.") or message.startswith(f"{where}:") or message.startswith(f"{where} "):
        return message
    if message.startswith(f"{last}.") or message.startswith(f"{last}:"):
        return where + message[len(last):]
    if any(message.startswith(f"{key}:") or message.startswith(f"{key}.") for key in keys):
        return f"{where}.{message}"
    return f"{where}: {message}"


def load_yaml(path: str | Path) -> dict:
    """Parse a YAML file into a dict; a missing file or bad YAML is a ConfigError naming it.

    An empty file is ``{}``; a top level other than a mapping is an error.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.config import load_yaml
    >>> path = Path(tempfile.mkdtemp()) / "train.yaml"
    >>> _ = path.write_text("train:\\n  lr: 0.001\\n")
    >>> load_yaml(path)
    {'train': {'lr': 0.001}}
    >>> load_yaml(path.with_name("missing.yaml"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: ...missing.yaml: config file not found
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        # the problem and where it is (1-based, as editors count), not PyYAML's multi-line report
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8), so not YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def to_dict(config: Any) -> dict:
    """A dataclass config as plain JSON-able dicts.

    Examples
    --------
    >>> from astrosr.config import to_dict
    >>> from astrosr.train_config import TrainConfig
    >>> values = to_dict(TrainConfig(model_options={"width": 8}))
    >>> values["model"], values["model_options"]
    ('resvae', {'width': 8})
    """
    return dataclasses.asdict(config)


def replace(config: Any, **overrides: Any) -> Any:
    """A copy of ``config`` with the non-None ``overrides`` applied and checked (errors name the key).

    Examples
    --------
    >>> from astrosr.config import replace
    >>> from astrosr.train_config import TrainConfig
    >>> config = replace(TrainConfig(), batch=4, lr=None)  # None: not given, the value is kept
    >>> config.batch, config.lr
    (4, 0.002)
    >>> replace(config, batch=2.5)
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: batch: expected int, got 2.5
    """
    merged = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(type(config), merged)
