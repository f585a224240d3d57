"""DataLoader workers that exit when the process that started them dies.

PyTorch's workers notice a dead parent only between batches (they poll ``getppid`` while waiting for the next
index); a worker busy reading a slide, or blocked handing a batch to a parent that was killed with SIGKILL,
stays alive, holding memory and file handles. :func:`exit_with_parent` (a ``worker_init_fn``, made by
:func:`worker_init`) asks Linux to send the worker SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
elsewhere, or if that call fails, a daemon thread checks the parent every second and ends the worker.

Linux's signal follows the *thread* that started the worker: milkit creates and iterates its loaders on one
thread (Lightning's loop, the extraction loop), so the workers end when that thread, i.e. the run, ends.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from typing import Callable

__all__ = ["exit_with_parent", "worker_init"]

_PR_SET_PDEATHSIG = 1


def _watch(parent_pid: int, interval: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def exit_with_parent(worker_id: int, parent_pid: int, interval: float = 1.0) -> None:
    """``worker_init_fn`` body: end this worker when ``parent_pid`` (the process that made the loader) dies."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch, args=(parent_pid, interval), daemon=True, name="milkit-parent-watch").start()


def worker_init() -> Callable[[int], None]:
    """The ``worker_init_fn`` for a DataLoader made in this process (picklable, so spawn start methods work)."""
    return functools.partial(exit_with_parent, parent_pid=os.getpid())
