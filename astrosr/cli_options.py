"""CLI flags built from a stage's options dataclass, and option keys turned back into flags.

Each stage's options are declared once, as fields of a frozen dataclass made
with :func:`astrosr.config.option`; :func:`click_options` turns those fields
into click options (``samples`` -> ``--samples``, a True-by-default bool
``consistency`` -> ``--no-consistency``, a nested :class:`~astrosr.psf.PSF`
-> ``--psf``, ``--psf-fwhm``, ...) and :func:`from_cli` builds the dataclass
from the values the user gave, through the same :func:`~astrosr.config.from_dict`
a pipeline YAML section goes through. The library names option keys in its
errors; :func:`flag_message` rewrites them as the flags the user typed.

Examples
--------
>>> import click
>>> from click.testing import CliRunner
>>> from dataclasses import dataclass
>>> from astrosr.config import option
>>> from astrosr.cli_options import click_options, from_cli
>>> @dataclass(frozen=True)
... class Demo:
...     samples: int = option(0, help="Posterior draws.", minimum=0)
...     consistency: bool = option(True, help="Data-consistency step.")
>>> @click.command()
... @click_options(Demo)
... def demo(**given):
...     print(from_cli(Demo, given))
>>> print(CliRunner().invoke(demo, ["--samples", "4", "--no-consistency"]).output.strip())
Demo(samples=4, consistency=False)
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Callable

import click

from .config import from_dict

__all__ = ["click_options", "from_cli", "flag_names", "flag_message"]

#: the CLI flags of the PSF keys (shared by prepare, evaluate and deblur)
PSF_FLAGS = {
    "path": ("--psf", "PSF kernel from a FITS file."),
    "shape": ("--psf-shape", "moffat, gaussian or airy [moffat]."),
    "fwhm": ("--psf-fwhm", "FWHM in pixels [4]."),
    "beta": ("--psf-beta", "Moffat beta [3]."),
    "radius": ("--psf-radius", "Airy first dark ring radius in pixels (--psf-shape airy)."),
    "pixscale": ("--psf-pixscale", "PSF file pixel scale (arcsec/px) [its SECPIX/PIXSCALE card]: resampled to the image's."),
    "image_pixscale": ("--image-pixscale", "Image pixel scale (arcsec/px) when its header has no celestial WCS."),
}
#: the PSF flags of a command whose default PSF is measured on each image (deblur: psf auto)
PSF_MEASURED = {
    "path": "auto (measured from each image's own stars) or a PSF kernel FITS file [auto].",
    "fwhm": "State the PSF instead: its FWHM in pixels (Moffat unless --psf-shape).",
}
#: what the PSF flags of a command that draws training PSFs (prepare) also take
PSF_RANGES = {
    "path": " Also a PSF named in the manifest.",
    "shape": " A comma list draws one per image or tile.",
    "fwhm": " Or a range lo:hi, drawn per image or tile.",
    "beta": " Or a range lo:hi.",
    "radius": " Or a range lo:hi.",
}


def _flag(field: dataclasses.Field) -> str:
    flag = field.metadata.get("flag")
    if flag:
        return flag
    dashed = field.name.replace("_", "-")
    return f"--no-{dashed}" if field.default is True else f"--{dashed}"


def _cli_fields(cls: type, only, exclude) -> list[dataclasses.Field]:
    fields = [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli", bool(f.metadata))]
    if only is not None:
        fields = [f for f in fields if f.name in only]
    return [f for f in fields if f.name not in exclude]


def _plain(kind):
    """``int | None`` -> ``int``; ``list[str]`` -> ``list``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return typing.get_origin(kind) or kind


def _default_text(field: dataclasses.Field) -> str:
    if field.default is dataclasses.MISSING or field.default is None or isinstance(field.default, bool):
        return ""
    return f" [{field.default}]"


def click_options(cls: type, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one click option per :func:`~astrosr.config.option` field of ``cls``.

    Every option defaults to None (a flag not given leaves the dataclass
    default in place, so the default lives in one place); a nested PSF field
    adds the ``--psf*`` flags.
    """
    hints = typing.get_type_hints(cls)
    decorators = []
    for field in _cli_fields(cls, only, exclude):
        kind = _plain(hints[field.name])
        help_text = field.metadata.get("help", "")
        if kind is bool:
            value = not field.default
            decorators.append(click.option(_flag(field), field.name, flag_value=value, default=None, help=help_text))
        elif kind is list:
            decorators.append(click.option(_flag(field), field.name, multiple=True, default=None, help=help_text))
        elif dataclasses.is_dataclass(kind):
            ranges = field.metadata.get("ranges", False)
            measured = getattr(field.default, "shape", None) == "auto"
            for key, (flag, text) in PSF_FLAGS.items():
                text = text + PSF_RANGES.get(key, "") if ranges else text
                text = PSF_MEASURED.get(key, text) if measured else text
                decorators.append(click.option(flag, f"{field.name}__{key}", default=None, help=text))
        else:
            choices = field.metadata.get("choices")
            minimum = field.metadata.get("minimum")
            if choices:
                ctype = click.Choice(list(choices))
            elif kind is int:
                ctype = click.IntRange(min=minimum) if minimum is not None else click.INT
            elif kind is float:
                ctype = click.FloatRange(min=minimum) if minimum is not None else click.FLOAT
            else:
                ctype = click.STRING
            decorators.append(click.option(_flag(field), field.name, type=ctype, default=None,
                                           help=help_text if help_text.rstrip(".").endswith("]")
                                           else help_text + _default_text(field)))

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def from_cli(cls: type, given: dict[str, Any], *, build: bool = True, **extra: Any) -> Any:
    """``cls`` from the values of :func:`click_options`' flags (None: not given) plus ``extra`` keys.

    The keys go through :func:`astrosr.config.from_dict`, as a pipeline
    YAML section does: a bad value is the same error either way. With
    ``build=False`` the checked-for-type keys are returned as a dict, to be
    merged with a YAML file's first.
    """
    hints = typing.get_type_hints(cls)
    data: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in given.items():
        if value is None or value == ():
            continue
        if "__" in name:
            outer, key = name.split("__", 1)
            nested.setdefault(outer, {})[key] = value
            continue
        if name not in hints:
            continue
        kind = _plain(hints[name])
        if kind is list:
            value = list(value)
        elif int in typing.get_args(hints[name]) and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            value = int(value)  # an HDU index typed as a number, not an EXTNAME
        data[name] = value
    data.update(nested)  # the PSF's own from_keys reads its numbers
    data.update({k: v for k, v in extra.items() if v is not None})
    return from_dict(cls, data) if build else data


def flag_names(cls: type) -> dict[str, str]:
    """Option key -> CLI flag for every CLI field of ``cls`` (``psf.fwhm`` -> ``--psf-fwhm``)."""
    hints = typing.get_type_hints(cls)
    names = {}
    for field in _cli_fields(cls, None, ()):
        if dataclasses.is_dataclass(_plain(hints[field.name])):
            names.update({f"{field.name}.{key}": flag for key, (flag, _) in PSF_FLAGS.items()})
        else:
            names[field.name] = _flag(field)
    return names


def flag_message(message: str, flags: dict[str, str]) -> str:
    """A library message with its option keys written as the flags that set them.

    A leading ``key:`` becomes ``--flag:``; a dotted key (``psf.fwhm``)
    becomes its flag wherever it stands; ``key=True`` and ``(key`` inside the
    text become the flag too (``--overwrite``).
    """
    for key in sorted(flags, key=len, reverse=True):
        flag = flags[key]
        if message.startswith(f"{key}:") or message.startswith(f"{key} "):
            message = flag + message[len(key):]
        if "." in key:
            message = re.sub(rf"(?<![\w.-]){re.escape(key)}(?![\w-])", flag, message)
        message = re.sub(rf"(?<![\w.-]){re.escape(key)}=(True|False)\b", flag, message)
        message = re.sub(rf"\({re.escape(key)}\b", f"({flag}", message)
    return message
