"""One exception family for the package.

Every error a user can cause (a bad file, a bad option, a bad config key) is
an :class:`AstrosrError`; the CLI prints its message as one red line and exits
with code 2. Anything else is a bug and keeps its traceback.
"""

__all__ = ["AstrosrError", "InputError", "ConfigError", "CheckpointError", "DataError"]


class AstrosrError(Exception):
    """Base class of every error astrosr raises on bad input.

    Catch it to handle every user error at once; anything else is a bug.

    Examples
    --------
    >>> from astrosr.errors import AstrosrError, CheckpointError, ConfigError, DataError, InputError
    >>> all(issubclass(e, AstrosrError) for e in (InputError, DataError, ConfigError, CheckpointError))
    True
    >>> try:
    ...     raise InputError("M51.fits: all pixels are NaN")
    ... except AstrosrError as exc:
    ...     print(f"error: {exc}")
    error: M51.fits: all pixels are NaN
    """


class InputError(AstrosrError):
    """An input file cannot be used (unreadable, wrong shape, all NaN...).

    Examples
    --------
    >>> from astrosr.fits_io import read_image
    >>> read_image("missing.fits")
    Traceback (most recent call last):
    ...
    astrosr.errors.InputError: missing.fits: file not found
    """


class DataError(AstrosrError):
    """A data file named by a manifest is missing or has the wrong checksum.

    Examples
    --------
    >>> from astrosr.manifest import load_manifest, resolve
    >>> resolve(load_manifest("data_manifests/bench_v1.yaml"), "empty_dir", ["val"])  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    astrosr.errors.DataError: empty_dir/M13_blue_0005.fits: missing; download it from ...
    """


class ConfigError(AstrosrError):
    """A configuration key or option value is invalid.

    Examples
    --------
    >>> from astrosr.train_config import TrainConfig
    >>> TrainConfig(batch=0)
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: batch: must be >= 1, got 0
    """


class CheckpointError(AstrosrError):
    """A checkpoint or weights file is missing, corrupt or foreign.

    Examples
    --------
    >>> from astrosr.checkpoint import load_model
    >>> load_model("missing.pt")
    Traceback (most recent call last):
    ...
    astrosr.errors.CheckpointError: missing.pt: model file not found
    """
