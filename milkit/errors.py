"""milkit's user-facing error type: one line naming the file or key and the cause."""
from __future__ import annotations

__all__ = ["MILKitError", "DataError", "ConfigError", "worker_error_line"]


class MILKitError(Exception):
    """Base class; its message is printed as one line by the command-line entry points."""


class DataError(MILKitError):
    """Bad input data (missing file, wrong shape, NaN, unknown label ...)."""


class ConfigError(MILKitError):
    """A configuration that cannot work (unknown name, dimension mismatch ...)."""


def worker_error_line(exc: BaseException) -> str | None:
    """For an error re-raised from a DataLoader worker (its message carries the worker's traceback), the
    traceback's last line, ``module.Class: message``; None for any other error."""
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return None
    return [ln for ln in text.splitlines() if ln.strip()][-1].strip()
