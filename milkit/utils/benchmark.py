"""Time and peak memory of one training step (forward + backward) on one bag: the shared core of the
``scripts/bench_*.py`` benchmarks.

Each CPU measurement runs in a fresh spawned process (``measure_isolated``) so that peak memory never mixes
between models: the peak is the process's peak RSS above its RSS before the first step (Linux ``ru_maxrss``).
On CUDA the peak is ``max_memory_allocated`` above the memory held before the first step, measured in this
process. Times are medians over the timed steps after the warm-up; CPU time (``process_time``) is reported
too because it is far less sensitive to other load on a shared machine.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import math
import multiprocessing as mp
import resource
import statistics
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

from milkit.utils.io import atomic_path

__all__ = ["bench_parser", "measure", "measure_isolated", "measure_step", "step_kwargs", "write_rows"]


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _loss_fn(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    """The training loss of one step: milkit models (task + own losses), torchmil models, or any module."""
    from milkit.models.base import MILModel

    if isinstance(model, MILModel):
        from milkit.training.methods.base import model_losses, task_loss

        y = torch.ones(1, dtype=torch.long, device=x.device)

        def milkit_loss() -> Tensor:
            out = model(x)
            return task_loss(out.logits, y) + sum(model_losses(model, out, y).values(), torch.zeros((), device=x.device))

        return milkit_loss
    if hasattr(model, "compute_loss"):  # torchmil
        y = torch.ones(1, device=x.device)
        return lambda: sum(model.compute_loss(y, x)[1].values())

    def output_sum() -> Tensor:
        out = model(x)
        out = getattr(out, "logits", out)
        return (out[0] if isinstance(out, (tuple, list)) else out).float().sum()

    return output_sum


def measure_step(build: Callable[[], nn.Module], n: int, in_dim: int = 1024, device: str = "cpu",
                 dtype: str = "float32", warmup: int = 1, repeats: int = 1, max_seconds: float = math.inf,
                 seed: int = 0) -> dict[str, Any]:
    """Median wall and CPU seconds and peak extra memory of fwd+bwd steps on a bag ``(1, n, in_dim)``."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = build().to(dev).train()
    x = torch.randn(1, n, in_dim, device=dev)
    loss_fn = _loss_fn(model, x)
    amp = torch.autocast(dev.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev) if cuda else _rss_bytes()
    times: list[float] = []
    cpu_times: list[float] = []
    start = time.perf_counter()
    for i in range(warmup + repeats):
        if i > warmup and time.perf_counter() - start > max_seconds:
            break
        model.zero_grad(set_to_none=True)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        with amp:
            loss = loss_fn()
        loss.backward()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(dev) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"n": n, "time_s": statistics.median(times), "cpu_s": statistics.median(cpu_times),
            "peak_mb": max(0.0, (peak - base) / 2**20), "timed_steps": len(times),
            "params": sum(p.numel() for p in model.parameters()), "device": device, "dtype": dtype,
            "threads": torch.get_num_threads()}


def _run(build: Callable[[], nn.Module], n: int, kwargs: dict[str, Any], threads: int | None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    return measure_step(build, n, **kwargs)


def measure_isolated(build: Callable[[], nn.Module], n: int, threads: int | None = None,
                     **kwargs: Any) -> dict[str, Any]:
    """``measure_step`` in a fresh spawned process; a failure (OOM, crash) comes back as ``{"error": ...}``.

    ``build`` must be picklable (a module-level function or a ``functools.partial`` of one).
    """
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(_run, build, n, kwargs, threads).result()
        except (RuntimeError, cf.process.BrokenProcessPool, MemoryError) as err:
            return {"n": n, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def measure(build: Callable[[], nn.Module], n: int, threads: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """CPU: ``measure_isolated``. CUDA: in this process (no process start per row), OOM as an error row."""
    if not str(kwargs.get("device", "cpu")).startswith("cuda"):
        return measure_isolated(build, n, threads, **kwargs)
    try:
        return measure_step(build, n, **kwargs)
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
        torch.cuda.empty_cache()
        return {"n": n, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}


def bench_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script shares."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="instances per bag")
    ap.add_argument("--in-dim", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="autocast dtype (float32 = no autocast)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: torch's)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps (median)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop timing a case after this long")
    ap.add_argument("--out", default=None, help="also write the rows here (.csv or .json)")
    return ap


def step_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` keyword arguments from ``bench_parser`` options."""
    return dict(in_dim=args.in_dim, device=args.device, dtype=args.dtype, warmup=args.warmup,
                repeats=args.repeats, max_seconds=args.max_seconds)


def write_rows(rows: list[dict[str, Any]], path: str, meta: dict[str, Any] | None = None) -> None:
    """Write benchmark rows atomically: CSV (union of keys as columns) or JSON (with ``meta``)."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".json"):
            tmp.write_text(json.dumps({**(meta or {}), "rows": rows}, indent=1))
            return
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)
