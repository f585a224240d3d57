"""milkit's user-facing error type: one line naming the file or key and the cause."""
from __future__ import annotations

__all__ = ["MILKitError", "DataError", "ConfigError"]


class MILKitError(Exception):
    """Base class; its message is printed as one line by the command-line entry points."""


class DataError(MILKitError):
    """Bad input data (missing file, wrong shape, NaN, unknown label ...)."""


class ConfigError(MILKitError):
    """A configuration that cannot work (unknown name, dimension mismatch ...)."""
