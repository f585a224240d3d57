"""One table for a training sweep: every job's ``results.json`` (models × folds × seeds) in one CSV.

Run automatically at the end of a ``-m`` sweep (the Hydra callback ``CollectResults`` in
``conf/hydra/default.yaml``), or by hand on a sweep folder whose launcher was gone before the jobs ended:
``milkit-collect <sweep dir>`` (or ``python -m milkit.training.collect <sweep dir>``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from milkit.utils.io import atomic_path

__all__ = ["collect_results", "summarise_table", "CollectResults", "main"]

TABLE_NAME = "results_table.csv"


def _job_keys(job_dir: Path) -> dict[str, Any]:
    """The job's sweep overrides (``key=value`` from ``.hydra/overrides.yaml``) plus its model name and seed."""
    keys: dict[str, Any] = {"job": job_dir.name}
    cfg_file, overrides = job_dir / ".hydra" / "config.yaml", job_dir / ".hydra" / "overrides.yaml"
    if cfg_file.is_file():
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        keys["model"] = (cfg.get("model") or {}).get("model_name")
        keys["seed"] = cfg.get("seed")
    if overrides.is_file():
        for item in yaml.safe_load(overrides.read_text()) or []:
            key, _, value = str(item).partition("=")
            keys.setdefault(key.lstrip("+~"), value)
    return keys


def collect_results(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per (job, fold) of every ``results.json`` under ``sweep_dir``; written to
    ``<sweep_dir>/results_table.csv``. Jobs without a ``results.json`` (failed, still running) are listed with
    ``status=missing`` so that a sweep with holes is visible."""
    sweep_dir = Path(sweep_dir)
    rows: list[dict[str, Any]] = []
    job_dirs = sorted({p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")},
                      key=lambda p: (len(p.name), p.name))
    for job_dir in job_dirs:
        keys, result = _job_keys(job_dir), job_dir / "results.json"
        if not result.is_file():
            rows.append({**keys, "status": "missing"})
            continue
        for fold in json.loads(result.read_text())["folds"]:
            metrics = {k: v for k, v in fold.items() if k.startswith(("test/", "best_"))}
            rows.append({**keys, "status": "ok", "fold": fold.get("fold"), "repeat": fold.get("repeat", 0),
                         "epochs": fold.get("epochs"), **metrics})
    table = pd.DataFrame(rows)
    if len(table) and (table["status"] == "ok").any():  # sweeps of other tasks (eval, continual) have none
        with atomic_path(sweep_dir / TABLE_NAME) as tmp:
            table.to_csv(tmp, index=False)
    return table


def summarise_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of every test metric over folds and seeds, per sweep point except the seed."""
    ok = table[table["status"] == "ok"] if "status" in table else table
    metrics = [c for c in ok.columns if c.startswith("test/")]
    fixed = {"job", "seed", "status", "fold", "repeat", "epochs", *metrics} | {c for c in ok if c.startswith("best_")}
    by = [c for c in ok.columns if c not in fixed and (c == "model" or ok[c].nunique(dropna=False) > 1)]
    if not len(ok) or not metrics:
        return pd.DataFrame()
    grouped = ok.groupby(by, dropna=False)[metrics] if by else ok[metrics].groupby(lambda _: "all")
    out = grouped.agg(["mean", "std"])
    out.insert(0, ("runs", "n"), grouped.size())
    return out


class CollectResults(Callback):
    """Hydra callback: after a multirun, collect the sweep's ``results.json`` files into one table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = collect_results(sweep_dir)
        if len(table):
            print(f"[milkit] sweep: {len(table)} rows (job × fold) → {sweep_dir / TABLE_NAME}")
            summary = summarise_table(table)
            if len(summary):
                print(summary.round(3).to_string())


def main(argv: list[str] | None = None) -> int:
    """``milkit-collect <sweep dir>``: write ``results_table.csv`` and print mean ± std per sweep point."""
    parser = argparse.ArgumentParser(prog="milkit-collect", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"milkit: error: {args.sweep_dir}: not a folder\n")
    table = collect_results(args.sweep_dir)
    if not len(table):
        parser.exit(2, f"milkit: error: {args.sweep_dir}: no Hydra job folders (*/.hydra/overrides.yaml)\n")
    print(f"{len(table)} rows → {args.sweep_dir / TABLE_NAME}")
    print(summarise_table(table).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
