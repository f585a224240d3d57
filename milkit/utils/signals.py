"""A signal that stops a run with ``RunInterrupted`` (Ctrl-C for training, SIGTERM for the AUT suite)."""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable, Iterator

from milkit.errors import RunInterrupted

__all__ = ["signal_stops_the_run"]


@contextlib.contextmanager
def signal_stops_the_run(signum: int, message: str, in_child: Callable[[], None]) -> Iterator[None]:
    """While inside, ``signum`` raises ``RunInterrupted(message)`` in this process and calls ``in_child()`` in a
    forked child that inherited the handler (e.g. raise ``KeyboardInterrupt``, or exit). An ignored signal stays
    ignored (``nohup``, a background job's Ctrl-C); outside the main thread nothing changes."""
    owner = os.getpid()

    def handler(signo: int, frame: Any) -> None:  # noqa: ARG001
        if os.getpid() != owner:
            in_child()
        raise RunInterrupted(message)

    try:
        if signal.getsignal(signum) is signal.SIG_IGN:
            raise ValueError
        previous = signal.signal(signum, handler)
    except ValueError:  # ignored, or not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signum, previous)
