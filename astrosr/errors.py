"""One exception family for the package.

Every error a user can cause (a bad file, a bad option, a bad config key) is
an :class:`AstrosrError`; the CLI prints its message as one red line and exits
with code 2. Anything else is a bug and keeps its traceback.
"""

__all__ = ["AstrosrError", "InputError", "ConfigError", "CheckpointError", "DataError"]


class AstrosrError(Exception):
    """Base class of every error astrosr raises on bad input."""


class InputError(AstrosrError):
    """An input file cannot be used (unreadable, wrong shape, all NaN...)."""


class DataError(AstrosrError):
    """A data file named by a manifest is missing or has the wrong checksum."""


class ConfigError(AstrosrError):
    """A configuration key or option value is invalid."""


class CheckpointError(AstrosrError):
    """A checkpoint or weights file is missing, corrupt or foreign."""
