"""Cohort-scale data loading: training epochs end-to-end (feature files → DataLoader → step) against the same
epochs on bags already in RAM (compute-only), with the OS page cache cold or warm.

The cohort is synthetic and laid out as TRIDENT / CLAM write it: ``<slide>.h5`` with ``features (N, D)`` and
``coords (N, 2)``, chunked one row per chunk, growable along N. "Cold" drops every file from the page cache
before the epoch (``/proc/sys/vm/drop_caches`` where permitted, else ``posix_fadvise(DONTNEED)`` per file), so
each bag is read from disk once, as in an epoch over a cohort larger than the page cache. Each configuration
runs in a fresh process; its peak RSS (main process, and the largest DataLoader worker) is reported.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from milkit.utils.io import atomic_path

__all__ = ["write_cohort", "drop_page_cache", "loader_defaults", "run_epochs", "run_isolated"]


def write_cohort(root: Path, n_bags: int, min_n: int, max_n: int, dim: int, dtype: str, seed: int = 0) -> Path:
    """Write (or reuse, when ``cohort.json`` says it matches) a synthetic cohort; returns its folder, which holds
    ``features/<slide>.h5`` and ``cohort.csv``."""
    spec = {"n_bags": n_bags, "min_n": min_n, "max_n": max_n, "dim": dim, "dtype": dtype, "seed": seed}
    marker = root / "cohort.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((max_n + 4096, dim), dtype=np.float32).astype(dtype)  # bags are shifted windows
    sizes = rng.integers(min_n, max_n + 1, n_bags)
    feat_dir = root / "features"
    feat_dir.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(sizes):
        off = int(rng.integers(0, 4096))
        with atomic_path(feat_dir / f"slide{i:04d}.h5") as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=pool[off:off + n], chunks=(1, dim), maxshape=(None, dim))
            coords = np.stack(np.divmod(np.arange(n), 512), 1).astype(np.int64) * 256
            f.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))
        with open(feat_dir / f"slide{i:04d}.h5", "rb") as fh:
            os.fsync(fh.fileno())  # clean pages: DONTNEED can then drop them
    pd.DataFrame({"slide_id": [f"slide{i:04d}" for i in range(n_bags)], "case_id": [f"case{i:04d}" for i in range(n_bags)],
                  "label": [i % 2 for i in range(n_bags)]}).to_csv(root / "cohort.csv", index=False)
    marker.write_text(json.dumps(spec))
    return root


def drop_page_cache(files: list[Path], system_wide: bool = False) -> str:
    """Evict ``files`` from the page cache (``posix_fadvise(DONTNEED)``; their pages are clean after
    ``write_cohort``'s fsync), or with ``system_wide`` the whole cache through ``/proc/sys/vm/drop_caches``
    where permitted (it slows every other process on the machine). Returns the method used."""
    if system_wide:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as fh:
                fh.write("3\n")
            return "drop_caches"
        except OSError:
            pass
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def loader_defaults() -> dict[str, Any]:
    """The loader settings of ``conf/data/features.yaml`` (what a user gets without overrides)."""
    from milkit.cli import CONF_DIR

    cfg = OmegaConf.load(Path(CONF_DIR) / "data" / "features.yaml")
    return {k: cfg.get(k) for k in ("batch_size", "num_workers", "max_instances")}


def _rss_peaks() -> tuple[float, float]:
    """Peak RSS in GiB of this process and of its largest finished child."""
    kib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kib[0] / 2**20, kib[1] / 2**20


def run_epochs(cohort: Path, model_name: str, mode: str, cache: str, loader: dict[str, Any], threads: int | None,
               max_bags: int | None = None, seed: int = 0, system_wide_drop: bool = False) -> dict[str, Any]:
    """One training epoch of ``model_name`` over the cohort: ``mode`` ``e2e`` (MILDataModule with ``loader``
    settings) or ``compute`` (bags pre-loaded, collated in advance); ``cache`` ``cold`` or ``warm`` (a first
    unmeasured epoch fills the page cache)."""
    from milkit.data.datamodule import MILDataModule
    from milkit.data.sources import FeatureDirSource
    from milkit.models import create_model
    from milkit.training.methods.base import StepContext
    from milkit.training.methods.supervised import Supervised

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    files = sorted((cohort / "features").glob("*.h5"))[:max_bags]
    table = pd.read_csv(cohort / "cohort.csv", dtype={"slide_id": str}).head(len(files))
    csv = cohort / f"cohort_{len(files)}.csv"
    if not csv.is_file():
        with atomic_path(csv) as tmp:
            table.to_csv(tmp, index=False)
    source = FeatureDirSource(cohort / "features", csv, validate=False)
    splits = pd.DataFrame({"bag_id": table["slide_id"], "split": "train"})
    dm = MILDataModule(source, splits, batch_size=loader["batch_size"], max_instances=loader["max_instances"],
                       num_workers=loader["num_workers"])
    model = create_model(model_name, in_dim=source.in_dim, num_classes=2).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    method = Supervised()

    def step(batch: Any) -> None:
        opt.zero_grad(set_to_none=True)
        method.training_step(model, batch, StepContext()).loss.backward()
        opt.step()

    drop = "-"
    if mode == "compute":  # the page cache plays no part: every batch is in RAM before the clock starts
        batches = list(dm.train_dataloader())
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches:
            step(batch)
    else:
        loader_ = dm.train_dataloader()
        if cache == "warm":
            for _ in loader_:  # fills the page cache (and the RAM cache, when there is one)
                pass
        else:
            drop = drop_page_cache(files, system_wide_drop)
        t0, c0, wait = time.perf_counter(), time.process_time(), 0.0
        batches = iter(loader_)
        while True:  # the time blocked waiting for the next batch is what loading costs the training loop
            t = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t
            if batch is None:
                break
            step(batch)
        del batches, loader_
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    wait = wait if mode == "e2e" else 0.0
    rss, worker_rss = _rss_peaks()
    n_inst = sum(h5py.File(p, "r")["features"].shape[0] for p in files)
    gb = sum(p.stat().st_size for p in files) / 1e9
    return {"model": model_name, "mode": mode, "cache": cache, "bags": len(files), "instances": n_inst,
            "gb_on_disk": round(gb, 6), "epoch_s": round(wall, 2), "main_cpu_s": round(cpu, 2),
            "data_wait_s": round(wait, 2), "wait_share": round(wait / wall, 3),
            "peak_rss_gb": round(rss, 2), "worker_peak_rss_gb": round(worker_rss, 2), "evict": drop,
            "threads": torch.get_num_threads(), **{f"loader.{k}": v for k, v in loader.items()}}


def _child(queue: Any, kwargs: dict[str, Any]) -> None:
    mp.set_start_method("fork", force=True)  # DataLoader workers forked as in a normal run, not spawned
    try:
        queue.put(run_epochs(**kwargs))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as a row
        queue.put({"error": f"{type(exc).__name__}: {exc}", **{k: kwargs[k] for k in ("model_name", "mode", "cache")}})


def run_isolated(**kwargs: Any) -> dict[str, Any]:
    """``run_epochs`` in a fresh spawned process (its peak RSS is its own)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, kwargs))
    proc.start()
    row = queue.get()
    proc.join()
    return row
