"""Time and peak memory of one training step (forward + backward) of a MIL model on one bag.

Each measurement can run in a fresh spawned process (``measure_isolated``), so that peak memory is not
polluted by earlier models: on CPU the peak is the process's peak RSS above its RSS before the first step
(Linux ``ru_maxrss``), on CUDA ``max_memory_allocated`` above the memory held before the first step.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import multiprocessing as mp
import resource
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from milkit.utils.io import atomic_path

__all__ = ["bench_parser", "measure_step", "measure_isolated", "write_csv"]


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _scalar(out: Any) -> torch.Tensor:
    """A scalar to backpropagate from a ``MILOutput``, a tensor, or a tuple whose first item is a tensor."""
    out = getattr(out, "logits", out)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.float().sum()


def measure_step(build: Callable[[], nn.Module], n: int, in_dim: int, device: str = "cpu",
                 dtype: str = "float32", warmup: int = 1, repeats: int = 1, seed: int = 0) -> dict[str, Any]:
    """Median seconds and peak extra memory (GiB) of ``repeats`` fwd+bwd steps on a bag ``(1, n, in_dim)``."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = build().to(dev).train()
    x = torch.randn(1, n, in_dim, device=dev)
    amp = torch.autocast(dev.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    times = []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            loss = _scalar(model(x))
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    # ru_maxrss is updated lazily and can trail the VmRSS read before the step by a few pages
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"n": n, "seconds": statistics.median(times), "peak_gib": max(0, peak - base) / 2**30,
            "params": sum(p.numel() for p in model.parameters()), "device": device, "dtype": dtype,
            "threads": torch.get_num_threads()}


def _run(build: Callable[[], nn.Module], n: int, kwargs: dict[str, Any], threads: int | None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    return measure_step(build, n, **kwargs)


def measure_isolated(build: Callable[[], nn.Module], n: int, threads: int | None = None,
                     **kwargs: Any) -> dict[str, Any]:
    """``measure_step`` in a fresh spawned process; failures (OOM, crash) come back as ``{"error": ...}``.

    ``build`` must be picklable (a module-level function or a ``functools.partial`` of one).
    """
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(_run, build, n, kwargs, threads).result()
        except (RuntimeError, cf.process.BrokenProcessPool, MemoryError) as err:
            return {"n": n, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def bench_parser(description: str) -> argparse.ArgumentParser:
    """The options every ``scripts/bench_*.py`` shares: sizes, feature dim, device, dtype, threads, CSV out."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--in-dim", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: torch's)")
    ap.add_argument("--out", default=None, help="write the rows as CSV here")
    return ap


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    """Write benchmark rows (dicts, union of keys as columns) to a CSV file, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
