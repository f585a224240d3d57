"""A signal that stops a run (Ctrl-C for training and preprocessing, SIGTERM for the AUT suite)."""
from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from milkit.errors import RunInterrupted

__all__ = ["StopSignal", "raise_keyboard_interrupt", "signal_stops_the_run"]


@dataclass
class StopSignal:
    """``fired`` stays true once the signal came, even when the exception it raised was swallowed: Python drops
    an exception raised inside ``__del__`` or a weakref callback ("Exception ignored in ..."), so a loop that must
    stop calls ``check()`` between its units of work as well."""

    message: str = ""
    raise_as: Callable[[str], BaseException] = RunInterrupted
    fired: bool = False

    def check(self) -> None:
        """Raise ``raise_as(message)`` if the signal came."""
        if self.fired:
            raise self.raise_as(self.message)


def raise_keyboard_interrupt() -> None:
    """The usual reaction to Ctrl-C (e.g. in forked DataLoader workers)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def signal_stops_the_run(signum: int, message: str, in_child: Callable[[], None],
                         raise_as: Callable[[str], BaseException] = RunInterrupted) -> Iterator[StopSignal]:
    """While inside, ``signum`` sets ``StopSignal.fired`` and raises ``raise_as(message)`` in this process, and
    calls ``in_child()`` in a forked child that inherited the handler (e.g. raise ``KeyboardInterrupt``, or exit).
    An ignored signal stays ignored (``nohup``, a background job's Ctrl-C); outside the main thread nothing
    changes."""
    owner, stop = os.getpid(), StopSignal(message, raise_as)

    def handler(signo: int, frame: Any) -> None:  # noqa: ARG001
        if os.getpid() != owner:
            in_child()
        stop.fired = True
        stop.check()

    try:
        if signal.getsignal(signum) is signal.SIG_IGN:
            raise ValueError
        previous = signal.signal(signum, handler)
    except ValueError:  # ignored, or not the main thread: leave signals alone
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signum, previous)
