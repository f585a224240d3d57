"""A real small file system for full-disk tests: a tmpfs, which only root can mount (CI runs as root)."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, fill: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (created), optionally filled to the last byte; skip the test where
    it cannot be mounted. Unmounted on exit."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        if fill:
            with contextlib.suppress(OSError), open(path / "fill", "wb") as f:
                while True:
                    f.write(bytes(4096))
                    f.flush()
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
