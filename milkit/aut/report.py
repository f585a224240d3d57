"""Verdicts, aggregation over seeds, and the markdown + JSON report of an algorithmic-unit-test suite."""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from milkit.errors import ConfigError
from milkit.utils.io import atomic_path

__all__ = ["VerdictRule", "json_ready", "merge_reports", "plot_curves", "render_markdown", "rerender", "summarize",
           "write_report"]


@dataclass(frozen=True)
class VerdictRule:
    """Verdict of one seed's training run, from its per-epoch curves.

    FAIL when the test AUC is below ``fail_below`` at **any** epoch from the first one whose training AUC
    exceeds ``onset_above`` on: a model that respects the assumption can never rank the test bags inverted,
    at any point of training, so one such epoch shows it learned the forbidden rule (a last-epoch verdict
    misses models that oscillate between the invalid cue and the real rule). Epochs before the onset are not
    judged: an untrained model scores near 0.5 by chance and can dip below it without having learned anything.
    Otherwise, on the last epoch: SUSPECT when train AUC > ``learned_above`` and the test AUC is more than
    ``max_gap`` lower; NOT-EXPRESSIVE for a standard-MIL model on a threshold test that it did not learn
    (train AUC ≤ ``learned_above``); PASS otherwise."""

    fail_below: float = 0.5
    onset_above: float = 0.6
    learned_above: float = 0.9
    max_gap: float = 0.2

    def judged(self, train_curve: Sequence[float], test_curve: Sequence[float]) -> list[float]:
        """The test AUCs the FAIL rule looks at: from the first epoch with train AUC > ``onset_above`` on."""
        onset = next((e for e, a in enumerate(train_curve) if a > self.onset_above), len(test_curve))
        return list(test_curve[onset:])

    def __call__(self, train_auc: float, test_auc: float, model_assumption: str, test_assumption: str,
                 train_curve: Sequence[float] | None = None, test_curve: Sequence[float] | None = None) -> str:
        """Without curves, the last epoch is the only point judged."""
        if not (math.isfinite(train_auc) and math.isfinite(test_auc)):
            return "ERROR"
        curves = (train_curve, test_curve) if train_curve and test_curve else ([train_auc], [test_auc])
        if any(a < self.fail_below for a in self.judged(*curves)):
            return "FAIL"
        if train_auc > self.learned_above and train_auc - test_auc > self.max_gap:
            return "SUSPECT"
        if model_assumption == "standard" and test_assumption == "threshold" and train_auc <= self.learned_above:
            return "NOT-EXPRESSIVE"
        return "PASS"

    def seed_verdict(self, run: dict[str, Any]) -> str:
        return self(run["train_auc"], run["test_auc"], run["model_assumption"], run["test_assumption"],
                    run.get("train_auc_curve"), run.get("test_auc_curve"))

    def combine(self, seed_verdicts: Sequence[str]) -> str:
        """FAIL if any seed fails (once is enough), UNSTABLE if the other verdicts disagree."""
        if "FAIL" in seed_verdicts:
            return "FAIL"
        return seed_verdicts[0] if len(set(seed_verdicts)) == 1 else "UNSTABLE"


def _stats(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(runs: Sequence[dict[str, Any]], rule: VerdictRule) -> list[dict[str, Any]]:
    """One row per (model, test), in first-seen order: last-epoch mean ± std over seeds, the worst judged
    epoch over all seeds, the fraction of judged (seed, epoch) points below ``fail_below``, the verdict."""
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
        judged = [a for r in ok for a in rule.judged(r.get("train_auc_curve") or [r["train_auc"]],
                                                        r.get("test_auc_curve") or [r["test_auc"]])]
        row["worst_auc"] = min(judged) if judged else None
        row["below_fraction"] = float(np.mean([a < rule.fail_below for a in judged])) if judged else None
        row["n_judged"] = len(judged)
        checks = [r["property"]["lowered_fraction"] for r in ok if r.get("property")]
        row["lowered_fraction"] = float(np.mean(checks)) if checks else None
        row["seed_verdicts"] = [rule.seed_verdict(r) for r in ok]
        row["verdict"] = rule.combine(row["seed_verdicts"])
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


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def render_markdown(rows: Sequence[dict], meta: dict[str, Any]) -> str:
    """The report: a verdict matrix (model × test), a detailed table, errors, and the wall time."""
    tests = list(dict.fromkeys(r["test"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["test"]): r for r in rows}
    p, v = meta["protocol"], meta["verdict_rule"]
    shuffled = meta.get("shuffled_models") or []
    lines = ["# Algorithmic unit tests (Raff & Holt, NeurIPS 2023)", "",
             f"Protocol `{meta.get('protocol_name', 'custom')}`: seeds {meta['seeds']}; {p['epochs']} epochs; batch "
             f"{p['batch_size']} ({p.get('batching', 'random')} batches); loss {p['loss']}; train subset "
             f"{p['train_subset']}; n_train/n_test {meta['n_train'] or 'default'}/{meta['n_test'] or 'default'}; "
             f"jobs {meta['jobs']}" + ("; instances shuffled within bags." if meta.get("shuffle_instances") else "."),
             *([f"Order-dependent models, trained with the instances of every bag shuffled at every step and tested "
                f"on bags shuffled once: {', '.join(shuffled)}."] if shuffled else []),
             f"Cells: verdict (last-epoch test AUC, mean over seeds / worst judged epoch over all seeds). The test "
             f"AUC is measured after every epoch; a point is judged from the first epoch whose training AUC exceeds "
             f"{v.get('onset_above', 0)} on. FAIL: any judged point of any seed < {v['fail_below']}. UNSTABLE: "
             f"the seeds' other verdicts disagree. SUSPECT: last-epoch train AUC > {v['learned_above']} and test AUC "
             f"more than {v['max_gap']} lower. NOT-EXPRESSIVE: standard-MIL model on a threshold test that it cannot "
             f"learn and does not exploit. †: train AUC ≤ {v['learned_above']}, the model did not learn the training "
             "task; the verdict only says whether the test ranking is inverted.", "",
             "| model | MIL assumption | " + " | ".join(tests) + " | all PASS |",
             "|---|---|" + "---|" * len(tests) + "---|"]
    for m in models:
        cells, verdicts = [], []
        for t in tests:
            r = by.get((m, t))
            verdicts.append(r["verdict"] if r else "–")
            cells.append("–" if r is None else r["verdict"] if r["verdict"] == "ERROR"
                         else f"{r['verdict']} ({r['test_auc']:.2f} / {_f(r.get('worst_auc'))}){_dagger(r, meta)}")
        first = next(by[(m, t)] for t in tests if (m, t) in by)
        lines.append(f"| {m} | {first['model_assumption']} | " + " | ".join(cells)
                     + f" | {'yes' if all(v == 'PASS' for v in verdicts) else 'no'} |")
    lines += ["", "## Details", "",
              "| model | test | train AUC | test AUC (last epoch) | worst judged | judged < 0.5 | verdict | per seed "
              "| lowered (property) | top instance, test positives | s / run (CPU) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{v} × {n}" for v, n in Counter(r.get("seed_verdicts", [])).items()) or "–"
        low = "–" if r.get("lowered_fraction") is None else f"{r['lowered_fraction']:.3f}"
        secs = f"{r['seconds']:.0f} ({r['cpu_seconds']:.0f})" if "seconds" in r else "–"
        below = "–" if r.get("below_fraction") is None else f"{100 * r['below_fraction']:.0f}% of {r['n_judged']}"
        lines.append(f"| {r['model']} | {r['test']} | {_pm(r, 'train_auc')} | {_pm(r, 'test_auc')} | "
                     f"{_f(r.get('worst_auc'), '.3f')} | {below} | {r['verdict']} | {seeds} | {low} | "
                     f"{_top(r.get('top_role_positive_bags'))} | {secs} |")
    errors = [f"- {r['model']} × {r['test']}: {e}" for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "## Errors", "", *errors]
    plots = meta.get("plots") or []
    if plots:
        lines += ["", "## Test AUC per epoch", "", *[f"![{Path(q).stem}]({Path(q).name})" for q in plots]]
    load = meta["environment"]["load_average_start"][0], meta["environment"]["load_average_end"][0]
    if meta.get("interrupted"):
        lines += ["", f"**Interrupted** ({meta['interrupted']}): the tables hold the finished runs only."]
    lines += ["", f"Wall time: {meta['wall_time_s']:.1f} s for {meta['n_runs']} runs ({meta['jobs']} worker(s); "
              f"{meta['cpu_time_s']:.0f} CPU-seconds in the runs; 1-min load average {load[0]:.1f} at start, "
              f"{load[1]:.1f} at end on {meta['environment']['cpu_count']} CPUs).", ""]
    return "\n".join(lines)


def plot_curves(runs: Sequence[dict[str, Any]], out_dir: str | Path, fail_below: float = 0.5) -> list[Path]:
    """One PNG per test, ``aut_<test>.png``: test AUC against epoch, one line per model (mean over seeds, the
    band spans the seeds' min to max). Written atomically; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves: dict[str, dict[str, list[list[float]]]] = {}
    for r in runs:
        if r.get("error") is None and r.get("test_auc_curve"):
            curves.setdefault(r["test"], {}).setdefault(r["model"], []).append(r["test_auc_curve"])
    paths = []
    for test, by_model in curves.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        colors = plt.get_cmap("tab20")
        for k, (model, cs) in enumerate(by_model.items()):
            n = min(len(c) for c in cs)
            a = np.array([c[:n] for c in cs])
            epochs = np.arange(1, n + 1)
            color = colors(k % 20)
            ax.plot(epochs, a.mean(0), label=model, color=color, lw=1.5)
            ax.fill_between(epochs, a.min(0), a.max(0), color=color, alpha=0.15, lw=0)
        ax.axhline(fail_below, color="k", ls="--", lw=0.8)
        ax.set(xlabel="epoch", ylabel="test AUC", title=test, ylim=(-0.02, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        path = Path(out_dir) / f"aut_{''.join(c if c.isalnum() or c in '_-' else '_' for c in test)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def rerender(json_path: str | Path, rule: VerdictRule | None = None) -> str:
    """The markdown report of a stored ``aut_report.json``, optionally with other verdict thresholds."""
    data = json.loads(Path(json_path).read_text())
    meta = data["meta"]
    if rule is not None:
        meta = {**meta, "verdict_rule": asdict(rule)}
    return render_markdown(summarize(data["runs"], VerdictRule(**meta["verdict_rule"])), meta)


def merge_reports(report_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> dict[str, Any]:
    """One report from the ``aut_report.json`` of several parts of a suite run one after another (e.g. one test
    per job): the runs are pooled, the verdicts recomputed, the wall and CPU times summed and the plots redrawn.
    The parts must share the protocol and the verdict rule. Written to ``out_dir`` when given."""
    paths = [Path(d) / "aut_report.json" for d in report_dirs]
    parts = []
    for path in paths:
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise ConfigError(f"aut merge: cannot read {path}: {err}") from None
    meta = dict(parts[0]["meta"])
    for path, part in zip(paths, parts):
        for key in ("protocol", "verdict_rule", "protocol_name"):
            if part["meta"].get(key) != meta.get(key):
                raise ConfigError(f"aut merge: {path} has another {key} than {paths[0]}")
    runs = [r for part in parts for r in part["runs"]]
    union = lambda key: list(dict.fromkeys(x for part in parts for x in part["meta"][key]))  # noqa: E731
    env = [part["meta"]["environment"] for part in parts]
    meta.update(tests=union("tests"), models=union("models"), methods=union("methods"),
                shuffled_models=union("shuffled_models"), seeds=sorted(set(union("seeds"))), n_runs=len(runs),
                wall_time_s=sum(part["meta"]["wall_time_s"] for part in parts),
                cpu_time_s=sum(part["meta"]["cpu_time_s"] for part in parts), merged_from=[str(p) for p in paths],
                environment={**env[0], "load_average_end": env[-1]["load_average_end"]})
    meta.pop("interrupted", None)
    stopped = [f"{path.parent.name}: {part['meta']['interrupted']}" for path, part in zip(paths, parts)
               if part["meta"].get("interrupted")]
    if stopped:
        meta["interrupted"] = "; ".join(stopped)
    rule = VerdictRule(**meta["verdict_rule"])
    rows = summarize(runs, rule)
    written: list[Path] = []
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        meta["plots"] = [str(p) for p in plot_curves(runs, out_dir, rule.fail_below)]
        written = list(write_report(out_dir, runs, rows, meta))
    return {"summary": rows, "runs": runs, "meta": meta, "markdown": render_markdown(rows, meta), "paths": written}


def write_report(out_dir: str | Path, runs: Sequence[dict], rows: Sequence[dict], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``aut_report.md`` and ``aut_report.json`` atomically; returns their paths."""
    out = Path(out_dir)
    md_path, json_path = out / "aut_report.md", out / "aut_report.json"
    with atomic_path(md_path) as tmp:
        tmp.write_text(render_markdown(rows, meta))
    payload = json_ready({"meta": meta, "summary": list(rows), "runs": list(runs)})
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False))
    return md_path, json_path


def json_ready(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become ``null`` so the file is strict JSON."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
