"""Crash-safe file writing: write to a temporary name in the same folder, then rename."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "tmp_name_for"]


def tmp_name_for(path: Path) -> Path:
    """A unique temporary sibling of ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it to ``path``, on error delete it.

    Example::

        with atomic_path(out / "slide.h5") as tmp:
            with h5py.File(tmp, "w") as f: ...
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name_for(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
