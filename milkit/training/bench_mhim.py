"""Measurements for MHIM-MIL: training cost against plain supervised training, and test AUC over seeds.

``speed``: one training epoch over WSI-sized random bags (``D = 1024``) per (model, method), each in a fresh
subprocess, all in the same run: wall time of the epoch (after one warm-up epoch) and peak memory of the
training steps (CUDA: ``max_memory_allocated`` above the resident tensors over the timed epoch; CPU: peak-RSS
increase over the warm-up epoch, with the kernel's high-water mark reset before it). Models and methods are
built from the experiment overlays (``mhim_<model>_baseline`` for supervised, ``mhim_<model>`` for MHIM v1,
``method=mhim_v2`` for v2; TransMIL's v2 uses ``score=attention``).

``auc``: per seed, the two-stage run (baseline, then MHIM v1 and v2 with each fold's baseline as the teacher)
through ``train(cfg)`` on a milkit dataset; test AUC mean over folds, then mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from milkit.cli import CONF_DIR
from milkit.training.methods.base import StepContext
from milkit.types import BagBatch

__all__ = ["compose_run", "speed_child", "run_speed", "run_auc", "main"]

METHODS = ("supervised", "mhim", "mhim_v2")


def compose_run(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """``conf/train.yaml`` composed outside a Hydra app, writing into ``out_dir``."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        out = str(out_dir or Path.cwd() / "outputs" / "bench_mhim")
        cfg.paths.output_dir, cfg.paths.log_dir, cfg.paths.root_dir = out, f"{out}/logs", out
    return cfg


def method_overrides(model: str, method: str) -> list[str]:
    if method == "supervised":
        return [f"experiment=mhim_{model}_baseline"]
    if method == "mhim":
        return [f"experiment=mhim_{model}", "method.teacher_init=null"]
    return [f"experiment=mhim_{model}_baseline", "method=mhim_v2"] + (["method.score=attention"]
                                                                      if model == "transmil" else [])


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def speed_child(model: str, method: str, n_bags: int, n_min: int, n_max: int, seed: int) -> dict[str, Any]:
    """Measure one (model, method) in this process; returns epoch time (s) and peak memory (MiB)."""
    torch.manual_seed(seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = compose_run(method_overrides(model, method) + ["data=synthetic", "data.in_dim=1024"])
    net, meth = instantiate(cfg.model), instantiate(cfg.method)
    meth.setup(net)
    net.to(dev).train()
    meth.to(dev).train()
    opt = instantiate(cfg.optimizer)([p for p in [*net.parameters(), *meth.parameters()] if p.requires_grad])
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(n_min, n_max + 1, (n_bags,), generator=g).tolist()
    bags = [BagBatch(x=torch.randn(1, n, 1024, generator=g).to(dev), y=torch.tensor([i % 2], device=dev),
                     mask=torch.ones(1, n, dtype=torch.bool, device=dev)) for i, n in enumerate(sizes)]
    ctx = StepContext(max_steps=2 * n_bags)

    def epoch() -> float:
        t0 = time.perf_counter()
        for bag in bags:
            loss = meth.training_step(net, bag, ctx).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            meth.on_optimizer_step(net, ctx)
            ctx.global_step += 1
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if dev.type == "cuda":
        epoch()  # warm-up
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        seconds = epoch()
        peak = torch.cuda.max_memory_allocated() - base
    else:  # the warm-up epoch gives the memory: freed heap memory stays resident and hides later peaks
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS high-water mark
            f.write("5")
        base = _rss_kb("VmRSS:") * 1024
        epoch()
        peak = _rss_kb("VmHWM:") * 1024 - base
        seconds = epoch()
    return {"model": model, "method": method, "epoch_s": seconds, "peak_mib": peak / 2**20, "device": dev.type,
            "mean_n": statistics.mean(sizes)}


def run_speed(models: list[str], n_bags: int, n_min: int, n_max: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        for method in METHODS:
            cmd = [sys.executable, "-m", "milkit.training.bench_mhim", "_child", model, method, str(n_bags),
                   str(n_min), str(n_max), str(seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
            if proc.returncode:
                rows.append({"model": model, "method": method, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _auc(summary: dict[str, Any]) -> float:
    return float(summary["test/auroc"]["mean"])


def run_auc(model: str, data: str, seeds: list[int], out: Path, extra: list[str]) -> dict[str, list[float]]:
    """Two-stage runs per seed; returns the test AUC (mean over folds) per method and seed."""
    from milkit.training.train import train

    aucs: dict[str, list[float]] = {m: [] for m in METHODS}
    for seed in seeds:
        common = [f"data={data}", f"seed={seed}", "cv.repeats=1", *extra]
        base_dir = out / f"{model}_{data}_s{seed}_supervised"
        teacher = f"method.teacher_init='{base_dir}/{{fold}}/checkpoints/best.ckpt'"
        runs = {"supervised": [f"experiment=mhim_{model}_baseline"],
                "mhim": [f"experiment=mhim_{model}", f"baseline_dir={base_dir}"],
                "mhim_v2": [f"experiment=mhim_{model}_baseline", "method=mhim_v2", teacher]}
        for method, overrides in runs.items():
            summary = train(compose_run(overrides + common, out / f"{model}_{data}_s{seed}_{method}"))
            aucs[method].append(_auc(summary))
            print(json.dumps({"seed": seed, "method": method, "test_auroc": aucs[method][-1]}), flush=True)
    return aucs


def format_speed(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<10}{'method':<12}{'epoch_s':>9}{'peak_MiB':>10}{'time×':>7}{'mem×':>7}"]
    base = {r["model"]: r for r in rows if r["method"] == "supervised" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<10}{r['method']:<12}  failed: {r['error']}")
            continue
        b = base.get(r["model"])
        ratio = (f"{r['epoch_s'] / b['epoch_s']:>7.2f}{r['peak_mib'] / max(b['peak_mib'], 1e-9):>7.2f}"
                 if b else "")
        lines.append(f"{r['model']:<10}{r['method']:<12}{r['epoch_s']:>9.2f}{r['peak_mib']:>10.0f}{ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        model, method, n_bags, n_min, n_max, seed = argv[1:]
        print(json.dumps(speed_child(model, method, int(n_bags), int(n_min), int(n_max), int(seed))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed", help="epoch time and peak memory, MHIM vs supervised")
    s.add_argument("--models", nargs="+", default=["abmil"])
    s.add_argument("--bags", type=int, default=16)
    s.add_argument("--n-min", type=int, default=2000)
    s.add_argument("--n-max", type=int, default=8000)
    s.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("auc", help="test AUC over seeds, MHIM vs baseline (two-stage)")
    a.add_argument("--model", default="abmil")
    a.add_argument("--data", default="ucsb_breast_cancer")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--out", type=Path, default=Path("outputs/bench_mhim"))
    a.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=50")
    args = p.parse_args(argv)
    if args.part == "speed":
        print(format_speed(run_speed(args.models, args.bags, args.n_min, args.n_max, args.seed)))
        return
    aucs = run_auc(args.model, args.data, args.seeds, args.out.resolve(), args.overrides)
    print(f"test AUC over seeds {args.seeds} ({args.model}, {args.data}; per seed the mean over folds):")
    for method, vals in aucs.items():
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"  {method:<12}{statistics.mean(vals):.4f} ± {std:.4f}   per seed: "
              + ", ".join(f"{v:.4f}" for v in vals))


if __name__ == "__main__":
    main()
