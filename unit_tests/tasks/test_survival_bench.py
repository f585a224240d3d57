"""scripts/bench_survival.py's pieces: the mean-pool Cox baseline on both synthetic designs, and the report."""
from __future__ import annotations

import json

import pytest

from milkit.data.splits import make_cv_splits
from milkit.data.synthetic_survival import SyntheticSurvivalSource
from milkit.tasks import SurvivalTask
from milkit.tasks.bench import mean_pool_cox_cindex, report


@pytest.mark.parametrize("symmetric", [False, True])
def test_mean_pool_baseline_reads_the_mean_only_in_the_research_note_design(symmetric: bool) -> None:
    task = SurvivalTask()
    source = task.prepare(SyntheticSurvivalSource(240, min_size=20, max_size=60, symmetric=symmetric, seed=0))
    splits = make_cv_splits(task.strata(source.records, 3), 3, 0)
    cindex = sum(mean_pool_cox_cindex(source, splits, steps=150)) / 3
    if symmetric:
        assert 0.4 < cindex < 0.62, cindex   # the bag mean carries no type information: chance
    else:
        assert cindex > 0.7, cindex          # the bag mean is linear in the type fractions


def test_report_pools_outputs_and_counts_each_seed_once(tmp_path) -> None:
    base = [{"run": "mean-pool Cox (baseline)", "seed": s, "cindex": 0.5 + s / 100, "oracle": 0.8} for s in (0, 1, 2)]
    model = [{"run": "abmil/nll", "seed": s, "cindex": 0.7 + s / 100, "oracle": 0.8, "folds": 5} for s in (0, 1, 2)]
    for name, recs in (("a", base + model[:2]), ("b", base + model[2:])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = {r["model"]: r for r in report([tmp_path / "a", tmp_path / "b"])}
    assert rows["mean-pool Cox (baseline)"]["seeds"] == [0, 1, 2] and rows["abmil/nll"]["seeds"] == [0, 1, 2]
    assert rows["abmil/nll"]["cindex"] == "0.710 ± 0.010"
    assert rows["abmil/nll"]["gap_to_oracle"] == pytest.approx(0.09)
    assert json.loads((tmp_path / "a" / "bench_survival.json").read_text())[0]["model"] == rows[
        "mean-pool Cox (baseline)"]["model"]
