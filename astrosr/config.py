"""Plain dataclass configs loaded from YAML and checked key by key.

Every stage's options are a dataclass; :func:`from_dict` builds one from a
mapping (a YAML section or CLI overrides), rejecting unknown keys and wrong
types with an error that names the key, e.g. ``train.lr: expected float, got
'fast'``.
"""

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .errors import ConfigError

__all__ = ["from_dict", "load_yaml", "to_dict", "replace"]


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
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{key}: expected {name}, got {value!r}")


def from_dict(cls, data, *, where=""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Parameters
    ----------
    cls : dataclass type
    data : mapping or None
        Keys are field names; missing keys keep their defaults.
    where : str
        Prefix for error messages (the YAML section), e.g. ``'train'``.
    """
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
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def load_yaml(path):
    """Parse a YAML file into a dict; a missing file or bad YAML is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def to_dict(config):
    """A dataclass config as plain JSON-able dicts."""
    return dataclasses.asdict(config)


def replace(config, **overrides):
    """A copy of ``config`` with the non-None ``overrides`` applied and checked."""
    merged = to_dict(config)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(type(config), merged)
