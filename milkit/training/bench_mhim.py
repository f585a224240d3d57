"""Measurements for MHIM-MIL: training cost against plain supervised training, and test AUC over seeds.

``speed``: time and peak memory of one training step on one bag of ``N`` instances (``D = 1024``) per
(model, method, N), measured by the shared core ``milkit.utils.benchmark.measure`` (a fresh process per row
on CPU). A step is the method's ``training_step`` (teacher forward, masks, student forward, losses) plus
``backward`` and the teacher's EMA update; an epoch costs the sum of its bags' steps. Models and methods come
from the experiment overlays (``mhim_<model>_baseline`` for supervised, ``mhim_<model>`` for MHIM v1,
``method=mhim_v2`` for v2, with its class-aware score).

``auc``: per seed, the two-stage run (baseline, then MHIM v1 and v2 with each fold's baseline as the teacher)
through ``train(cfg)`` on a milkit dataset; test AUC mean over folds, then mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from milkit.cli import CONF_DIR
from milkit.training.methods.base import StepContext, TrainingMethod
from milkit.types import BagBatch
from milkit.utils.benchmark import bench_parser, measure, step_kwargs, write_rows

__all__ = ["MethodStep", "build_step", "compose_run", "format_speed", "run_auc", "run_speed", "main"]

METHODS = ("supervised", "mhim", "mhim_v2")


def compose_run(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """``milkit/conf/train.yaml`` composed outside a Hydra app, writing into ``out_dir``."""
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
    return [f"experiment=mhim_{model}_baseline", "method=mhim_v2"]


class MethodStep(nn.Module):
    """A training method's step as a module: ``forward(x (1, N, D))`` returns its loss on that bag, after
    the EMA update that followed the previous step (so a timed step includes it)."""

    def __init__(self, model: nn.Module, method: TrainingMethod) -> None:
        super().__init__()
        self.model, self.method = model, method
        method.setup(model)
        self.ctx = StepContext(max_steps=100)

    def forward(self, x: Tensor) -> Tensor:
        self.method.on_optimizer_step(self.model, self.ctx)
        batch = BagBatch(x=x, mask=torch.ones(x.shape[:2], dtype=torch.bool, device=x.device),
                         y=torch.ones(1, dtype=torch.long, device=x.device))
        return self.method.training_step(self.model, batch, self.ctx).loss


def build_step(model: str, method: str, in_dim: int) -> MethodStep:
    cfg = compose_run(method_overrides(model, method) + ["data=synthetic", f"data.in_dim={in_dim}"])
    return MethodStep(instantiate(cfg.model), instantiate(cfg.method))


def run_speed(models: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.sizes:
        for model in models:
            for method in METHODS:
                build = functools.partial(build_step, model, method, args.in_dim)
                rows.append({"model": model, "method": method, **measure(build, n, args.threads, **step_kwargs(args))})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
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
    """Markdown table with the ratios to supervised training of the same model at the same N."""
    base = {(r["model"], r["n"]): r for r in rows if r["method"] == "supervised" and "error" not in r}
    keys = ("time_s", "cpu_s", "peak_mb")
    out = ["| model | N | method | step ms | CPU ms | peak MB | time × | CPU × | memory × |",
           "|---|---:|---|" + "---:|" * 6]
    for r in rows:
        cells = [r["model"], r["n"], r["method"]]
        if "error" in r:
            cells += [f"failed: {r['error']}"] + [""] * 5
        else:
            ref = base.get((r["model"], r["n"]))
            cells += [f"{r['time_s'] * 1e3:.0f}", f"{r['cpu_s'] * 1e3:.0f}", f"{r['peak_mb']:.0f}"]
            cells += [f"{r[k] / ref[k]:.2f}" if ref and ref[k] > 0 else "" for k in keys]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["auc"]:
        p = argparse.ArgumentParser(description="test AUC over seeds, MHIM vs baseline (two-stage)")
        p.add_argument("--model", default="abmil")
        p.add_argument("--data", default="ucsb_breast_cancer")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--out", type=Path, default=Path("outputs/bench_mhim"))
        p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=50")
        args = p.parse_args(argv[1:])
        aucs = run_auc(args.model, args.data, args.seeds, args.out.resolve(), args.overrides)
        print(f"test AUC over seeds {args.seeds} ({args.model}, {args.data}; per seed the mean over folds):")
        for method, vals in aucs.items():
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            print(f"  {method:<12}{statistics.mean(vals):.4f} ± {std:.4f}   per seed: "
                  + ", ".join(f"{v:.4f}" for v in vals))
        return
    ap = bench_parser("time and peak memory of a training step, MHIM v1/v2 vs supervised (same run)")
    ap.add_argument("--models", nargs="+", default=["abmil", "transmil", "dsmil"])
    args = ap.parse_args(argv[1:] if argv[:1] == ["speed"] else argv)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# MHIM benchmark: one bag, D = {args.in_dim}, training step, device: {device}, dtype {args.dtype}",
          file=sys.stderr)
    rows = run_speed(args.models, args)
    print(format_speed(rows))
    if args.out:
        write_rows(rows, args.out, {"device": device, "dtype": args.dtype})


if __name__ == "__main__":
    main()
