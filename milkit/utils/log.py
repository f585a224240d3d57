"""milkit's console output: module loggers under ``milkit``, shown by the command-line entry points.

Library code logs with ``logging.getLogger(__name__)``, so importing milkit prints nothing beyond what the
application's own logging set-up shows. The entry points (``milkit-*`` and ``scripts/*.py``, through
:func:`milkit.cli.run_safely`) call :func:`configure_cli_logging`: records of the ``milkit`` loggers at or above
the config's ``log_level`` (``INFO`` by default; ``WARNING`` for quiet runs, ``DEBUG`` for more) go to stdout as
the bare message, so progress lines read as they always did, and also to Hydra's job log file. Under distributed
runs only global rank zero shows records below ``WARNING`` (as Lightning's ``rank_zero_info``), so a 4-GPU run
prints each line once.
"""
from __future__ import annotations

import logging
import sys

from milkit.errors import ConfigError
from milkit.utils.dist import is_global_zero

__all__ = ["LEVELS", "RankZeroFilter", "configure_cli_logging", "on_global_zero"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def on_global_zero() -> bool:
    """Whether this process is global rank zero: the rank Lightning's strategy set, else the launcher's
    environment (:func:`milkit.utils.dist.is_global_zero`)."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    rank = getattr(rank_zero_only, "rank", None)
    return int(rank) == 0 if rank is not None else is_global_zero()


class RankZeroFilter(logging.Filter):
    """Passes warnings and errors from every process, lower levels only from global rank zero."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or on_global_zero()


class _StdoutHandler(logging.StreamHandler):
    """Writes to the ``sys.stdout`` of the moment (pytest and notebooks swap it), not the one at creation."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_cli_logging(level: str | int | None = "INFO") -> logging.Logger:
    """Show the ``milkit`` loggers' records at ``level`` and above on stdout (the message only, rank zero only
    below WARNING) and in the files the root logger writes to (Hydra's job log); returns the ``milkit`` logger.
    Calling it again replaces the previous set-up."""
    name = str(level or "INFO").upper()
    if name not in LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LEVELS)}, got '{level}'")
    logger = logging.getLogger("milkit")
    for h in [h for h in logger.handlers if getattr(h, "_milkit_cli", False)]:
        logger.removeHandler(h)
    console = _StdoutHandler()
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for h in [console, *files]:
        logger.addHandler(h)
        h._milkit_cli = True  # type: ignore[attr-defined]
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(RankZeroFilter())
    logger.setLevel(name)
    logger.propagate = False  # Hydra's root console handler would print every line a second time, timestamped
    return logger
