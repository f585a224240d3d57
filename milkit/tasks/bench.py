"""Survival benchmark (``scripts/bench_survival.py``; results in docs/survival.md).

``cindex``: on ``data=synthetic_survival`` (known risk), K-fold CV × seeds through ``train(cfg)`` for each
(model, loss), plus a baseline measured in the same run on the same splits: mean-pooled bag features into a
linear Cox model (torchsurv's partial likelihood, full batch, Adam). Each fold also reports the oracle
c-index (the true log-hazard as the risk). Table: test c-index mean ± std over seeds (of the per-seed fold means)
and the gap to the oracle.

``step``: the cost of the task axis: one supervised training step (forward, loss, backward, Adam) of the same
model on the same bag under classification (CE, 2 logits) and survival (NLL, 4 bins), repeats interleaved
(a loaded machine drifts) and the median ratio reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from torchsurv.loss.cox import neg_partial_log_likelihood

from milkit.data.splits import make_cv_splits
from milkit.tasks import ClassificationTask, SurvivalTask, Task
from milkit.tasks.survival_metrics import harrell_cindex
from milkit.training.bench_mhim import compose_run
from milkit.training.methods.base import StepContext, TrainingMethod
from milkit.training.train import train
from milkit.types import BagBatch
from milkit.utils.io import atomic_path

__all__ = ["mean_pool_cox_cindex", "report", "run_cindex", "run_step", "main"]

#: (name, overrides) per benchmarked configuration; widths reduced for the CPU
RUNS = {
    "abmil/nll": ["model=abmil"],
    "abmil/cox": ["model=abmil", "task.loss=cox", "data.batch_size=16"],
    "gated_abmil/nll": ["model=gated_abmil"],
    "transmil/nll": ["model=transmil", "model.dim=64", "model.heads=4"],
    "mambamil/nll": ["model=mambamil", "model.embed_dim=64"],
    "rrt_abmil/nll": ["model=rrt_abmil", "model.embed_dim=64", "model.attn_dim=32"],
    "mean/nll": ["model=mean", "model.embed_dims=[64]"],  # attention-free: instance MLP, then the bag mean
}
SMALL_ABMIL = ["model.embed_dims=[64]", "model.attn_dim=32"]


def mean_pool_cox_cindex(source: Any, splits: pd.DataFrame, steps: int = 300, lr: float = 0.01,
                         weight_decay: float = 1e-3) -> list[float]:
    """Per fold: a linear Cox model on mean-pooled, training-standardised bag features; test Harrell c-index."""
    recs = source.records.set_index("bag_id")
    x_all = torch.stack([source.load(b).features.mean(0) for b in recs.index])
    index = {b: i for i, b in enumerate(recs.index)}
    time_all = torch.tensor(recs["time"].to_numpy(float))
    event_all = torch.tensor(recs["event"].to_numpy(int)).bool()
    out = []
    for _, fold in splits.groupby("fold"):
        tr = torch.tensor([index[b] for b in fold.loc[fold["split"] == "train", "bag_id"]])
        te = torch.tensor([index[b] for b in fold.loc[fold["split"] == "test", "bag_id"]])
        mean, std = x_all[tr].mean(0), x_all[tr].std(0).clamp_min(1e-6)
        x = (x_all - mean) / std
        torch.manual_seed(0)
        linear = torch.nn.Linear(x.shape[1], 1)
        opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            opt.zero_grad()
            neg_partial_log_likelihood(linear(x[tr])[:, 0], event_all[tr], time_all[tr], ties_method="efron").backward()
            opt.step()
        with torch.no_grad():
            out.append(harrell_cindex(linear(x[te])[:, 0], time_all[te], event_all[te]))
    return out


def _stats(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _record(out_dir: Path, record: dict[str, Any]) -> None:
    """Append one (run, seed) result to ``runs.jsonl`` at once: an interrupted benchmark keeps what it measured."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def run_cindex(args: argparse.Namespace) -> list[dict[str, Any]]:
    out_dir = Path(args.output)
    common = ["task=survival", "data=synthetic_survival", f"cv.folds={args.folds}", f"trainer.max_epochs={args.epochs}",
              "trainer.min_epochs=1", "monitor=val/cindex", "monitor_mode=max",
              f"callbacks.early_stopping.patience={args.patience}", "task.km_plot=false", "task.bootstrap=0",
              "logger=none", *args.overrides]
    for seed in args.seeds:
        cfg = compose_run(common + [f"seed={seed}"], out_dir / "baseline")
        task = SurvivalTask()
        source = task.prepare(instantiate(cfg.data.source))
        splits = make_cv_splits(task.strata(source.records, args.folds), args.folds, seed)
        if cfg.cv.get("run_folds") is not None:
            splits = splits[splits["fold"].isin(list(cfg.cv.run_folds))]
        recs = source.records.set_index("bag_id")
        tests = [recs.loc[f.loc[f["split"] == "test", "bag_id"]] for _, f in splits.groupby("fold")]
        oracle = [harrell_cindex(*(torch.tensor(t[c].to_numpy(float)) for c in ("true_risk", "time", "event")))
                  for t in tests]
        baseline = float(np.mean(mean_pool_cox_cindex(source, splits)))
        _record(out_dir, {"run": "mean-pool Cox (baseline)", "seed": seed, "cindex": baseline,
                          "oracle": float(np.mean(oracle))})
        for name in args.runs:
            extra = RUNS[name] + (SMALL_ABMIL if "abmil" in name and "rrt" not in name else [])
            t0 = time.perf_counter()
            run_dir = out_dir / name.replace("/", "_") / str(seed)
            summary = train(compose_run(common + extra + [f"seed={seed}"], run_dir))
            rec = {"run": name, "seed": seed, "cindex": summary["test/cindex"]["mean"],
                   "oracle": summary["test/oracle_cindex"]["mean"], "folds": len(summary["folds"]),
                   "wall_s": time.perf_counter() - t0}
            _record(out_dir, rec)
            print(f"[bench] seed {seed} {name}: c-index {rec['cindex']:.3f} (oracle {rec['oracle']:.3f}) "
                  f"{rec['wall_s']:.0f}s", flush=True)
    return report([out_dir])


def report(dirs: list[Path]) -> list[dict[str, Any]]:
    """The table from the ``runs.jsonl`` of one or more benchmark outputs (e.g. one process per seed)."""
    records = [json.loads(line) for d in dirs for line in (Path(d) / "runs.jsonl").read_text().splitlines() if line]
    # one record per (run, seed): outputs run side by side each fit the baseline of their seeds (the same folds)
    unique = {(r["run"], r["seed"]): r for r in records}
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in unique.values():
        by_run.setdefault(r["run"], []).append(r)
    rows = []
    for name, recs in by_run.items():
        c, o = [r["cindex"] for r in recs], [r["oracle"] for r in recs]
        rows.append({"model": name, "cindex": _stats(c), "oracle": _stats(o), "gap_to_oracle": statistics.mean(o) -
                     statistics.mean(c), "seeds": sorted(r["seed"] for r in recs), "folds": recs[0].get("folds")})
    with atomic_path(Path(dirs[0]) / "bench_survival.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=2))
    print("\n| model / loss | test c-index (mean ± std over seeds) | oracle c-index (same folds) | gap to oracle "
          "| seeds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['cindex']} | {r['oracle']} | {r['gap_to_oracle']:+.3f} | {len(r['seeds'])} |")
    return rows


class _Step:
    """One supervised step (forward, task loss, backward, Adam) of an ABMIL on a fixed bag under ``task``."""

    def __init__(self, task: Task, width: int, n: int, in_dim: int, y: torch.Tensor) -> None:
        from milkit.models import create_model

        torch.manual_seed(0)
        self.model = create_model("abmil", in_dim=in_dim, num_classes=width)
        self.method = TrainingMethod()
        self.method.task = task
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batch = BagBatch(x=torch.randn(1, n, in_dim), mask=torch.ones(1, n, dtype=torch.bool), y=y)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.method.training_step(self.model, self.batch, StepContext()).loss.backward()
        self.opt.step()


def run_step(args: argparse.Namespace) -> dict[str, float]:
    survival = SurvivalTask()
    survival.load_state({"inner_edges": [10.0, 20.0, 30.0]})
    steps = {"classification": _Step(ClassificationTask(), 2, args.n, args.in_dim, torch.tensor([1])),
             "survival": _Step(survival, 4, args.n, args.in_dim, torch.tensor([[25.0, 1.0]]))}
    for fn in steps.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):  # interleaved: both tasks see the same machine load
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    ratios = [s / c for s, c in zip(times["survival"], times["classification"])]
    res = {"classification_ms": statistics.median(times["classification"]),
           "survival_ms": statistics.median(times["survival"]), "ratio_median": statistics.median(ratios)}
    print(f"[bench] ABMIL step, N={args.n}, D={args.in_dim}: classification {res['classification_ms']:.2f} ms, "
          f"survival {res['survival_ms']:.2f} ms, survival/classification {res['ratio_median']:.3f} "
          f"(median of {args.repeats} interleaved repeats)")
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="milkit survival benchmark")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cindex")
    c.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS), help="none: the baseline only")
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--epochs", type=int, default=20)
    c.add_argument("--patience", type=int, default=5)
    c.add_argument("--output", default="outputs/bench_survival")
    c.add_argument("overrides", nargs="*", help="extra train.yaml overrides (e.g. data.source.n_patients=200)")
    r = sub.add_parser("report")
    r.add_argument("dirs", nargs="+", help="benchmark output folders (their runs.jsonl)")
    s = sub.add_parser("step")
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--in-dim", type=int, default=1024)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.cmd == "cindex":
        run_cindex(args)
    elif args.cmd == "report":
        report([Path(d) for d in args.dirs])
    else:
        run_step(args)
