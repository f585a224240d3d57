"""A Ctrl-C (or SIGTERM) whose exception Python swallows, as when it lands inside a library object's ``__del__``."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class RaisesSignalWhenDeleted:
    """``RaisesSignalWhenDeleted()`` (deleted at once) sends ``signum`` (default SIGINT) from ``__del__``: the
    handler's exception is raised there, and Python only reports it to ``sys.unraisablehook`` ("Exception ignored
    in ...")."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)


@contextlib.contextmanager
def ctrl_c_acts() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt inside, even when this test run ignores it (a background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
