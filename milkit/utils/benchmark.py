"""Forward + backward time and peak memory of registered models on one bag, with torchmil as the peer.

Every (model, bag size) runs in a fresh subprocess, so peak memory never mixes between models. Memory is
``torch.cuda.max_memory_allocated`` minus the allocation before the step on CUDA, and the peak-RSS increase
over the step on CPU (``ru_maxrss`` after the first step − RSS before it). Time is the median over timed
steps after one warm-up step, as wall-clock and as process CPU time (all threads; less sensitive to other
load on a shared CPU machine than wall-clock). A step is ``loss = task_loss + the model's own losses; loss.backward()``
(torchmil: ``compute_loss`` + ``backward``). Failures (e.g. out of memory) are recorded and the run goes on.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["PEERS", "run_benchmark", "format_table", "main"]

IN_DIM = 1024

#: milkit model → torchmil peer measured alongside it (for the ratio columns)
PEERS = {"abmil": "torchmil.abmil", "gated_abmil": "torchmil.gated_abmil", "transmil": "torchmil.transmil",
         "clam_sb": "torchmil.clam_sb", "dsmil": "torchmil.dsmil"}


def _torchmil_model(name: str) -> nn.Module:
    """torchmil models configured like milkit's defaults (fc 1024→512 + ReLU where milkit has one)."""
    import torchmil.models as tm

    def fc() -> nn.Module:
        return nn.Sequential(nn.Linear(IN_DIM, 512), nn.ReLU())

    shape = (IN_DIM,)
    builders: dict[str, Callable[[], nn.Module]] = {
        "abmil": lambda: tm.ABMIL(in_shape=shape, att_dim=128, feat_ext=fc()),
        "gated_abmil": lambda: tm.ABMIL(in_shape=shape, att_dim=128, gated=True, feat_ext=fc()),
        "transmil": lambda: tm.TransMIL(in_shape=shape, att_dim=512, n_layers=2, n_heads=8, n_landmarks=256,
                                        pinv_iterations=6),
        "clam_sb": lambda: tm.CLAM_SB(in_shape=shape, att_dim=256, gated=True, k_sample=8, feat_ext=fc()),
        "dsmil": lambda: tm.DSMIL(in_shape=shape, att_dim=128, nonlinear_q=True, nonlinear_v=True),
    }
    return builders[name]()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _step_fn(name: str, n: int, device: torch.device) -> tuple[nn.Module, Callable[[], None]]:
    x = torch.randn(1, n, IN_DIM, device=device)
    if name.startswith("torchmil."):
        model = _torchmil_model(name.split(".", 1)[1]).to(device).train()
        y = torch.ones(1, device=device)

        def step() -> None:
            _, losses = model.compute_loss(y, x)
            sum(losses.values()).backward()
    else:
        from milkit.models import create_model
        from milkit.training.methods.base import model_losses, task_loss

        model = create_model(name, in_dim=IN_DIM, num_classes=2).to(device).train()
        y = torch.ones(1, dtype=torch.long, device=device)

        def step() -> None:
            out = model(x)
            loss = task_loss(out.logits, y)
            for value in model_losses(model, out, y).values():
                loss = loss + value
            loss.backward()
    return model, step


def measure(name: str, n: int, device: str = "cpu", repeats: int = 3, max_seconds: float = 60.0,
            amp: bool = False) -> dict[str, Any]:
    """One model, one bag of ``n`` instances: ``{"time_s", "peak_mb", "params"}`` (run in a fresh process)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model, step = _step_fn(name, n, dev)
    run = step
    if amp:
        def run() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss_bytes()
    run()  # warm-up, and the memory peak
    sync()
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times: list[float] = []
    cpu_times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < max_seconds):
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {"time_s": statistics.median(times), "cpu_s": statistics.median(cpu_times), "peak_mb": peak / 2**20,
            "timed_steps": len(times), "params": sum(p.numel() for p in model.parameters())}


def _measure_in_subprocess(name: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "milkit.utils.benchmark", "--child", name, str(n), "--device", args.device,
           "--repeats", str(args.repeats), "--max-seconds", str(args.max_seconds), "--threads", str(args.threads)]
    if args.amp:
        cmd.append("--amp")
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this milkit, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or f"exit code {proc.returncode}").strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = list(args.models)
    if not args.no_peers:
        names += [PEERS[m] for m in args.models if m in PEERS]
    rows = []
    for n in args.sizes:
        for name in names:
            try:
                res = _measure_in_subprocess(name, n, args)
            except subprocess.TimeoutExpired:
                res = {"error": f"timed out after {args.timeout} s"}
            rows.append({"model": name, "n": n, **res})
            print(_fmt_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _fmt_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['model']:<22} {r['n']:>7}  failed: {r['error']}"
    return (f"{r['model']:<22} {r['n']:>7} {r['time_s'] * 1e3:>11.1f} {r['cpu_s'] * 1e3:>11.1f} "
            f"{r['peak_mb']:>10.1f} {r['params'] / 1e6:>8.2f}")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table with milkit/torchmil ratios where a peer was measured at the same size."""
    by_key = {(r["model"], r["n"]): r for r in rows}
    lines = ["| model | N | fwd+bwd ms | CPU ms | peak MB | params M | peer | time ratio | CPU ratio | mem ratio |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['n']} | failed: {r['error']} | | | | | | | |")
            continue
        peer = by_key.get((PEERS.get(r["model"], ""), r["n"]))
        ratios = ["", "", ""]
        if peer and "error" not in peer:
            ratios = [f"{r[k] / peer[k]:.2f}" if peer[k] > 0 else "" for k in ("time_s", "cpu_s", "peak_mb")]
        lines.append(f"| {r['model']} | {r['n']} | {r['time_s'] * 1e3:.1f} | {r['cpu_s'] * 1e3:.1f} | "
                     f"{r['peak_mb']:.1f} | {r['params'] / 1e6:.2f} | {peer['model'] if peer else ''} | "
                     f"{' | '.join(ratios)} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from milkit.models import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list_models(), help="registered model names (default: all)")
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000, 50000], help="instances per bag")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up (median)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop timing a model after this long")
    p.add_argument("--timeout", type=float, default=1800.0, help="per (model, size) subprocess timeout")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-peers", action="store_true", help="skip the torchmil peers")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        res = measure(args.child[0], int(args.child[1]), args.device, args.repeats, args.max_seconds, args.amp)
        print(json.dumps(res))
        return
    from milkit.errors import ConfigError
    from milkit.models import list_models

    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown} (known: {', '.join(list_models())})")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"# milkit model benchmark: one bag, D = {IN_DIM}, fwd+bwd, device: {device}"
          f"{', bf16 autocast' if args.amp else ''}", file=sys.stderr)
    rows = run_benchmark(args)
    print(format_table(rows))
    if args.json:
        from milkit.utils.io import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"device": device, "amp": args.amp, "rows": rows}, indent=1))
        print(f"results written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
