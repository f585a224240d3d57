"""Ctrl-C during training: ``RunInterrupted`` in this process, and a check at every batch for a Ctrl-C whose
exception Python swallowed (raised inside a ``__del__`` or weakref callback)."""
from __future__ import annotations

import contextlib
import signal
from typing import Any

import lightning as L

from milkit.utils.signals import StopSignal, raise_keyboard_interrupt, signal_stops_the_run

__all__ = ["StopWhenSignalled", "ctrl_c_stops_the_run"]


def ctrl_c_stops_the_run() -> contextlib.AbstractContextManager[StopSignal]:
    """Ctrl-C raises ``RunInterrupted`` in this process (Lightning would turn a KeyboardInterrupt into
    ``exit(1)``); forked DataLoader workers keep the usual KeyboardInterrupt; an ignored SIGINT stays ignored."""
    return signal_stops_the_run(signal.SIGINT, "stopped by Ctrl-C", raise_keyboard_interrupt)


class StopWhenSignalled(L.Callback):
    """Raises ``RunInterrupted`` after the batch in which the signal came, if its own exception was lost."""

    def __init__(self, stop: StopSignal) -> None:
        self.stop = stop

    def _check(self, *args: Any) -> None:
        self.stop.check()

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = _check
