"""Crash-safe file writing: write to a temporary name in the same folder, then rename."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "tmp_name_for", "writable_dir", "require_free_space"]


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


def writable_dir(path: str | os.PathLike, what: str = "output", room: int = 0) -> Path:
    """Create ``path`` (with parents) and check that a file of ``room`` bytes can be written in it (an empty
    file can still be created on a full disk); raise a one-line ``OutputError`` naming the path otherwise
    (read-only, a regular file on the way, disk full)."""
    from milkit.errors import OutputError

    path = Path(path).expanduser()
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{what} {path}: cannot create a folder there ({blocker} is a file, not a folder)")
    probe = tmp_name_for(path / "write_check")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            if room:
                f.write(bytes(room))
                f.flush()
                os.fsync(f.fileno())  # some file systems report a full disk only here
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write here ({(exc.strerror or str(exc)).lower()})") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path


def require_free_space(path: str | os.PathLike, nbytes: int) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` when its file system has less than ``nbytes`` free. Used before
    writing HDF5: libhdf5 cannot recover from a failed write (the next close of that file segfaults)."""
    free = shutil.disk_usage(Path(path).parent).free
    if free < nbytes:
        raise OSError(errno.ENOSPC, f"No space left on device (needs {nbytes / 2**20:.1f} MiB, "
                                    f"{free / 2**20:.1f} MiB free)", str(path))
