"""A cohort preprocessed in shards: which shard this process is, and one merged manifest for all shards.

A shard's index comes from the config (``shard=i num_shards=n``, e.g. a Hydra sweep ``-m shard=range(n)``) or,
in a plain run inside a SLURM job array, from ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``. Every shard
writes ``manifest_shard<i>of<n>.csv``; ``merge_manifests`` joins them into ``manifest.csv`` with one row per
slide of the cohort (``pending`` for slides no shard has reported yet) and names the shards to rerun.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import fields
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

from milkit.errors import ConfigError
from milkit.preprocess.manifest import ManifestRow
from milkit.preprocess.slides import SlideEntry
from milkit.utils.io import atomic_path

__all__ = ["resolve_shard", "in_hydra_multirun", "shard_manifest_name", "merge_manifests", "MergeResult",
           "DONE_STATUSES"]

DONE_STATUSES = ("ok", "skipped", "no_tissue")  # a rerun has nothing to do for these


def in_hydra_multirun() -> bool:
    """True inside a job of a Hydra sweep (``-m``), where a launcher (submitit's SLURM arrays included) owns
    the job index; the config's ``shard`` is then the only source of the shard index."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(f"{key}={env[key]!r} is not an integer") from None


def resolve_shard(shard: int | None, num_shards: int | None, multirun: bool = False,
                  env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``(shard, num_shards)``: the config's values when given; else, outside a Hydra sweep, the SLURM array
    task (``SLURM_ARRAY_TASK_ID`` of ``SLURM_ARRAY_TASK_COUNT``, or of ``num_shards`` when given, which is how a
    rerun of some shards, ``--array=3,7``, keeps its numbering); else ``(0, num_shards or 1)``."""
    if shard is None and not multirun and "SLURM_ARRAY_TASK_ID" in env:
        shard = _env_int(env, "SLURM_ARRAY_TASK_ID")
        if num_shards is None:
            if "SLURM_ARRAY_TASK_COUNT" not in env:
                raise ConfigError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; give num_shards=")
            num_shards = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    shard, num_shards = (0 if shard is None else int(shard)), (1 if num_shards is None else int(num_shards))
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}"
                          " (SLURM arrays must be 0-based: --array=0-<n-1>)")
    return shard, num_shards


def shard_manifest_name(shard: int, num_shards: int) -> str:
    return "manifest.csv" if num_shards == 1 else f"manifest_shard{shard}of{num_shards}.csv"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (shards finishing together merge one after the other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class MergeResult:
    """The merged table and the shards that still have work (failed or pending slides)."""

    def __init__(self, path: Path, table: pd.DataFrame) -> None:
        self.path, self.table = path, table
        todo = table[~table["status"].isin(DONE_STATUSES)]
        self.rerun_shards = sorted(int(s) for s in todo["shard"].unique())

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.table["status"].value_counts().sort_index().items()}

    def summary(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items()) or "no slides"
        text = f"cohort manifest: {counts} → {self.path}"
        if self.rerun_shards:
            text += f"; shards with failed or pending slides: {','.join(map(str, self.rerun_shards))}"
        return text


def merge_manifests(root: Path, entries: Sequence[SlideEntry], num_shards: int) -> MergeResult:
    """Join the ``num_shards`` shard manifests under ``root`` into ``root/manifest.csv`` (atomic, under a lock):
    one row per slide of ``entries`` in their sorted order, with its ``shard``; ``pending`` where no shard
    manifest has a row for it yet."""
    columns = [f.name for f in fields(ManifestRow)]
    with _locked(root / ".manifest.lock"):
        reported = []
        for i in range(num_shards):
            p = root / shard_manifest_name(i, num_shards)
            if p.is_file() and num_shards > 1:
                reported.append(pd.read_csv(p, dtype={"slide_id": str, "error": str, "stages": str}))
        done = pd.concat(reported).drop_duplicates("slide_id", keep="last").set_index("slide_id") if reported \
            else pd.DataFrame(columns=columns).set_index("slide_id")
        rows = []
        for k, e in enumerate(entries):
            row = done.loc[e.slide_id].to_dict() if e.slide_id in done.index else {"path": str(e.path),
                                                                                    "status": "pending"}
            rows.append({"slide_id": e.slide_id, **row, "shard": k % num_shards})
        table = pd.DataFrame(rows, columns=[*columns, "shard"])
        with atomic_path(root / "manifest.csv") as tmp:
            table.to_csv(tmp, index=False)
    return MergeResult(root / "manifest.csv", table)
