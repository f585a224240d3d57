"""milkit's user-facing error type: one line naming the file or key and the cause."""
from __future__ import annotations

import errno

__all__ = ["MILKitError", "DataError", "ConfigError", "OutputError", "RunInterrupted", "worker_error_line",
           "storage_error_line"]

#: ``OSError`` numbers that mean "this output cannot be written" (a user-fixable condition, not a bug)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}


class MILKitError(Exception):
    """Base class; its message is printed as one line by the command-line entry points."""


class DataError(MILKitError):
    """Bad input data (missing file, wrong shape, NaN, unknown label ...)."""


class ConfigError(MILKitError):
    """A configuration that cannot work (unknown name, dimension mismatch ...)."""


class OutputError(MILKitError):
    """An output location that cannot be written (read-only, under a regular file, disk full)."""


class RunInterrupted(BaseException):
    """Ctrl-C, with where the run stopped and what it kept. A ``BaseException`` but no ``KeyboardInterrupt``:
    Lightning turns the latter into ``exit(1)``, while this one passes through its teardown to the CLI (exit 130)."""


def storage_error_line(exc: BaseException, path: object = None) -> str | None:
    """``<file>: no space left on device`` for an ``OSError`` that says an output cannot be written (disk full,
    read-only, permission, a path under a regular file); None for any other error. ``path`` names the file when
    the error does not (a failed ``write`` carries no file name)."""
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    reason = exc.strerror or errno.errorcode.get(exc.errno, "cannot write")
    reason = reason[:1].lower() + reason[1:]
    where = exc.filename or path
    return f"{where}: {reason}" if where else reason


def worker_error_line(exc: BaseException) -> str | None:
    """For an error re-raised from a DataLoader worker (its message carries the worker's traceback), the
    traceback's last line, ``module.Class: message``; None for any other error."""
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return None
    return [ln for ln in text.splitlines() if ln.strip()][-1].strip()
