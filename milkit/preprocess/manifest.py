"""Per-run manifest CSV: one row per slide, rewritten atomically after every slide."""
from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from milkit.errors import storage_error_line, worker_error_line
from milkit.utils.io import atomic_path

__all__ = ["ManifestRow", "Manifest", "one_line"]


@dataclass
class ManifestRow:
    slide_id: str
    path: str
    status: str                  # ok | skipped | no_tissue | failed
    tiles: int | None = None
    seconds: float = 0.0
    tiles_per_s: float | None = None  # extraction throughput when features were computed
    stages: str = ""             # stages that did work, e.g. "segment+tile+extract"
    error: str = ""


class Manifest:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.rows = Path(path), []

    def add(self, row: ManifestRow) -> None:
        self.rows.append(row)
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(ManifestRow)])
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: ("" if v is None else round(v, 3) if isinstance(v, float) else v)
                                 for k, v in asdict(r).items()})

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line; for errors re-raised from DataLoader workers, the original cause; for an
    output that cannot be written, ``<file>: no space left on device`` (or read-only ...)."""
    storage = storage_error_line(exc)
    if storage is not None:
        return storage
    last = worker_error_line(exc)
    if last is not None:
        return last.split("milkit.errors.", 1)[-1]
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
