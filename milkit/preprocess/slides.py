"""Which slides a run processes: a folder (optionally recursive) or a CSV, sorted, then sharded."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from milkit.data.tables import read_table
from milkit.errors import ConfigError, DataError

__all__ = ["SlideEntry", "discover_slides", "shard_slides", "slide_id_of"]

DEFAULT_EXTENSIONS = ("svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "svslide", "bif", "png", "jpg",
                      "jpeg")


@dataclass(frozen=True)
class SlideEntry:
    slide_id: str
    path: Path
    mpp: float | None = None  # per-slide µm/px from the CSV (fallback, or override with force_mpp)


def slide_id_of(path: Path) -> str:
    """File name without its extension (and without ``.ome`` for OME-TIFF)."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def _from_csv(csv: Path) -> list[SlideEntry]:
    table = read_table(csv, "slide CSV")
    col = next((c for c in ("path", "slide_path", "slide") if c in table.columns), None)
    if col is None:
        raise DataError(f"{csv}: needs a 'path' column (found {', '.join(map(str, table.columns))})")
    out = []
    for _, row in table.iterrows():
        path = Path(str(row[col])).expanduser()
        path = path if path.is_absolute() else (csv.parent / path)
        sid = str(row["slide_id"]) if "slide_id" in table.columns and pd.notna(row["slide_id"]) else slide_id_of(path)
        mpp = float(row["mpp"]) if "mpp" in table.columns and pd.notna(row["mpp"]) else None
        out.append(SlideEntry(sid, path, mpp))
    return out


def discover_slides(source: str | os.PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS,
                    recursive: bool = False) -> list[SlideEntry]:
    """Slides of a folder (files with one of ``extensions``) or of a CSV, sorted by ``slide_id``."""
    source = Path(source).expanduser()
    if source.is_file() and source.suffix.lower() == ".csv":
        entries = _from_csv(source)
    elif source.is_dir():
        exts = {"." + e.lower().lstrip(".") for e in extensions}
        files = source.rglob("*") if recursive else source.iterdir()
        entries = [SlideEntry(slide_id_of(p), p) for p in files
                   if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    else:
        raise ConfigError(f"input={source}: not a folder or a .csv file")
    entries.sort(key=lambda e: e.slide_id)
    seen: dict[str, Path] = {}
    for e in entries:
        if e.slide_id in seen:
            raise ConfigError(f"slide id '{e.slide_id}' appears twice ({seen[e.slide_id]} and {e.path})")
        seen[e.slide_id] = e.path
    return entries


def shard_slides(entries: Sequence[SlideEntry], shard: int, num_shards: int) -> list[SlideEntry]:
    """Round-robin share ``shard`` of ``num_shards`` (disjoint, covering, stable across processes)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    return list(entries[shard::num_shards])
