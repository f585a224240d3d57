"""Verdicts, aggregation over seeds, and the markdown + JSON report of an algorithmic-unit-test suite."""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from milkit.utils.io import atomic_path

__all__ = ["VerdictRule", "render_markdown", "rerender", "summarize", "write_report"]


@dataclass(frozen=True)
class VerdictRule:
    """FAIL when test AUC < ``fail_below`` (the ranking is inverted: the invalid cue was exploited); SUSPECT
    when train AUC > ``learned_above`` and the test AUC is more than ``max_gap`` lower; NOT-EXPRESSIVE for a
    standard-MIL model on a threshold test that it did not learn (train AUC ≤ ``learned_above``) and did not
    exploit (not FAIL); PASS otherwise."""

    fail_below: float = 0.5
    learned_above: float = 0.9
    max_gap: float = 0.2

    def __call__(self, train_auc: float, test_auc: float, model_assumption: str, test_assumption: str) -> str:
        if not (math.isfinite(train_auc) and math.isfinite(test_auc)):
            return "ERROR"
        if test_auc < self.fail_below:
            return "FAIL"
        if train_auc > self.learned_above and train_auc - test_auc > self.max_gap:
            return "SUSPECT"
        if model_assumption == "standard" and test_assumption == "threshold" and train_auc <= self.learned_above:
            return "NOT-EXPRESSIVE"
        return "PASS"


def _stats(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(runs: Sequence[dict[str, Any]], rule: VerdictRule) -> list[dict[str, Any]]:
    """One row per (model, test), in first-seen order: mean ± std over seeds and the verdict of the means."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["test"]), []).append(r)
    rows = []
    for (model, test), rs in groups.items():
        ok = [r for r in rs if r.get("error") is None]
        row: dict[str, Any] = {"model": model, "test": test, "model_assumption": rs[0]["model_assumption"],
                               "test_assumption": rs[0]["test_assumption"], "seeds": [r["seed"] for r in rs],
                               "n_ok": len(ok), "errors": [f"seed {r['seed']}: {r['error']}" for r in rs if r.get("error")]}
        if not ok:
            rows.append({**row, "verdict": "ERROR"})
            continue
        for key in ("train_auc", "test_auc", "test_acc", "seconds", "cpu_seconds"):
            row[key], row[key + "_std"] = _stats([r[key] for r in ok])
        checks = [r["property"]["lowered_fraction"] for r in ok if r.get("property")]
        row["lowered_fraction"] = float(np.mean(checks)) if checks else None
        row["verdict"] = rule(row["train_auc"], row["test_auc"], row["model_assumption"], row["test_assumption"])
        row["seed_verdicts"] = [rule(r["train_auc"], r["test_auc"], r["model_assumption"], r["test_assumption"])
                                for r in ok]
        tops = [r["top_roles"]["positive_bags"] for r in ok if r.get("top_roles")]
        row["top_role_positive_bags"] = ({k: round(float(np.mean([t.get(k, 0.0) for t in tops])), 4)
                                          for k in sorted({k for t in tops for k in t})} if tops else None)
        rows.append(row)
    return rows


def _pm(row: dict, key: str) -> str:
    return f"{row[key]:.3f} ± {row[key + '_std']:.3f}" if key in row else "–"


def _top(d: dict[str, float] | None) -> str:
    if not d:
        return "–"
    role, frac = max(d.items(), key=lambda kv: kv[1])
    return f"{role} {100 * frac:.0f}%"


def _dagger(row: dict, meta: dict) -> str:
    learned = meta["verdict_rule"]["learned_above"]
    return "†" if row["verdict"] in {"PASS", "FAIL"} and row["train_auc"] <= learned else ""


def render_markdown(rows: Sequence[dict], meta: dict[str, Any]) -> str:
    """The report: a verdict matrix (model × test), a detailed table, errors, and the wall time."""
    tests = list(dict.fromkeys(r["test"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["test"]): r for r in rows}
    p, v = meta["protocol"], meta["verdict_rule"]
    lines = ["# Algorithmic unit tests (Raff & Holt, NeurIPS 2023)", "",
             f"Seeds {meta['seeds']}; {p['epochs']} epochs; batch {p['batch_size']}; loss {p['loss']}; "
             f"train subset {p['train_subset']}; n_train/n_test {meta['n_train'] or 'default'}/"
             f"{meta['n_test'] or 'default'}; jobs {meta['jobs']}"
             + ("; instances shuffled within bags." if meta.get("shuffle_instances") else "."),
             f"Cells: verdict (test AUC, mean over seeds). FAIL: test AUC < {v['fail_below']}. SUSPECT: train AUC > "
             f"{v['learned_above']} and test AUC more than {v['max_gap']} lower. NOT-EXPRESSIVE: standard-MIL model on "
             f"a threshold test that it cannot learn and does not exploit. †: train AUC ≤ {v['learned_above']}, the "
             "model did not learn the training task; the verdict only says whether the test ranking is inverted.", "",
             "| model | MIL assumption | " + " | ".join(tests) + " | all PASS |",
             "|---|---|" + "---|" * len(tests) + "---|"]
    for m in models:
        cells, verdicts = [], []
        for t in tests:
            r = by.get((m, t))
            verdicts.append(r["verdict"] if r else "–")
            cells.append("–" if r is None else r["verdict"] if r["verdict"] == "ERROR"
                         else f"{r['verdict']} ({r['test_auc']:.2f}){_dagger(r, meta)}")
        first = next(by[(m, t)] for t in tests if (m, t) in by)
        lines.append(f"| {m} | {first['model_assumption']} | " + " | ".join(cells)
                     + f" | {'yes' if all(v == 'PASS' for v in verdicts) else 'no'} |")
    lines += ["", "## Details", "",
              "| model | test | train AUC | test AUC | verdict | per seed | lowered (property) | top instance, "
              "test positives | s / run (CPU) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{v} × {n}" for v, n in Counter(r.get("seed_verdicts", [])).items()) or "–"
        low = "–" if r.get("lowered_fraction") is None else f"{r['lowered_fraction']:.3f}"
        secs = f"{r['seconds']:.0f} ({r['cpu_seconds']:.0f})" if "seconds" in r else "–"
        lines.append(f"| {r['model']} | {r['test']} | {_pm(r, 'train_auc')} | {_pm(r, 'test_auc')} | {r['verdict']} "
                     f"| {seeds} | {low} | {_top(r.get('top_role_positive_bags'))} | {secs} |")
    errors = [f"- {r['model']} × {r['test']}: {e}" for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "## Errors", "", *errors]
    load = meta["environment"]["load_average_start"][0], meta["environment"]["load_average_end"][0]
    lines += ["", f"Wall time: {meta['wall_time_s']:.1f} s for {meta['n_runs']} runs ({meta['jobs']} worker(s); "
              f"{meta['cpu_time_s']:.0f} CPU-seconds in the runs; 1-min load average {load[0]:.1f} at start, "
              f"{load[1]:.1f} at end on {meta['environment']['cpu_count']} CPUs).", ""]
    return "\n".join(lines)


def rerender(json_path: str | Path, rule: VerdictRule | None = None) -> str:
    """The markdown report of a stored ``aut_report.json``, optionally with other verdict thresholds."""
    data = json.loads(Path(json_path).read_text())
    meta = data["meta"]
    if rule is not None:
        meta = {**meta, "verdict_rule": asdict(rule)}
    return render_markdown(summarize(data["runs"], VerdictRule(**meta["verdict_rule"])), meta)


def write_report(out_dir: str | Path, runs: Sequence[dict], rows: Sequence[dict], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``aut_report.md`` and ``aut_report.json`` atomically; returns their paths."""
    out = Path(out_dir)
    md_path, json_path = out / "aut_report.md", out / "aut_report.json"
    with atomic_path(md_path) as tmp:
        tmp.write_text(render_markdown(rows, meta))
    payload = _clean({"meta": meta, "summary": list(rows), "runs": list(runs)})
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False))
    return md_path, json_path


def _clean(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become ``null`` so the file is strict JSON."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
