"""Survival cohorts from feature directories: patient-level bags and every bad-input case as a one-line error."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from milkit.data.sources import FeatureDirSource
from milkit.errors import DataError
from milkit.tasks import ClassificationTask, SurvivalTask
from unit_tests.data.test_feature_files import write_h5


def make_survival_cohort(tmp_path: Path, rows: list[dict] | None = None) -> tuple[Path, Path]:
    """12 patients, two slides for the first three; columns as the shipped cohort tables."""
    fdir = tmp_path / "features"
    fdir.mkdir(exist_ok=True)
    if rows is None:
        rows = []
        for p in range(12):
            for s in range(2 if p < 3 else 1):
                rows.append({"slide_id": f"p{p}_s{s}", "case_id": f"p{p}", "survival_months": 3.0 + 4 * p,
                             "event": int(p % 3 != 0)})
    for r in rows:
        write_h5(fdir / f"{r['slide_id']}.h5", n=4 + len(r["slide_id"]), d=8)
    csv = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return fdir, csv


def test_patient_level_bags_concatenate_slides_and_keep_their_origin(tmp_path: Path) -> None:
    fdir, csv = make_survival_cohort(tmp_path)
    bags = SurvivalTask().prepare(FeatureDirSource(fdir, csv))
    assert len(bags.records) == 12 and list(bags.records["bag_id"][:2]) == ["p0", "p1"]
    bag = bags.load("p0")
    a, b = bags.base.load("p0_s0"), bags.base.load("p0_s1")
    torch.testing.assert_close(bag.features, torch.cat([a.features, b.features]))
    assert bag.slide_index.tolist() == [0] * len(a) + [1] * len(b)
    assert bag.label == (3.0, 0.0) and bags.load("p1").label == (7.0, 1.0)
    slides = SurvivalTask(level="slide").prepare(FeatureDirSource(fdir, csv))
    assert len(slides.records) == 15 and slides.load("p0_s1").label == (3.0, 0.0)


def test_censorship_column_is_read_as_one_minus_event(tmp_path: Path) -> None:
    rows = [{"slide_id": f"s{i}", "case_id": f"c{i}", "survival_months": 1.0 + i, "censorship": i % 2}
            for i in range(10)]
    fdir, csv = make_survival_cohort(tmp_path, rows)
    recs = SurvivalTask().prepare(FeatureDirSource(fdir, csv)).records
    assert recs["event"].tolist() == [1 - i % 2 for i in range(10)]


def test_classification_needs_a_label_column(tmp_path: Path) -> None:
    fdir, csv = make_survival_cohort(tmp_path)
    with pytest.raises(DataError, match=r"cohort.csv: no 'label' column"):
        ClassificationTask().prepare(FeatureDirSource(fdir, csv))


@pytest.mark.parametrize("row, value, message", [
    (4, {"survival_months": None}, r"cohort.csv row 6: missing or non-numeric survival time"),
    (4, {"survival_months": -2.0}, r"cohort.csv row 6: negative survival time -2"),
    (7, {"event": 2}, r"cohort.csv row 9: event must be 0 or 1, got '2'"),
    (1, {"survival_months": 99.0}, r"cohort.csv row 3: case 'p0' has conflicting survival labels across its slides"),
])
def test_bad_labels_are_one_line_errors_naming_file_and_row(tmp_path: Path, row: int, value: dict,
                                                             message: str) -> None:
    fdir, csv = make_survival_cohort(tmp_path)
    df = pd.read_csv(csv)
    for k, v in value.items():
        df[k] = df[k].astype(object)
        df.loc[row, k] = v
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=message):
        SurvivalTask().prepare(FeatureDirSource(fdir, csv))


def test_no_events_and_too_few_uncensored_cases(tmp_path: Path) -> None:
    fdir, csv = make_survival_cohort(tmp_path)
    task = SurvivalTask()
    task.prepare(FeatureDirSource(fdir, csv))
    train = pd.DataFrame({"time": [1.0, 2.0, 3.0], "event": [0, 0, 0]})
    with pytest.raises(DataError, match=r"cohort.csv \(training fold\): no events"):
        task.fit(train)
    with pytest.raises(DataError, match=r"training fold\): fewer uncensored cases .* than task.n_bins=4"):
        task.fit(pd.DataFrame({"time": [1.0, 2.0, 3.0, 4.0], "event": [1, 1, 1, 0]}))
    df = pd.read_csv(csv).assign(event=0)
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"cohort.csv: no events"):
        SurvivalTask().prepare(FeatureDirSource(fdir, csv))


def test_split_strata_fall_back_from_bin_by_event_to_event_to_none() -> None:
    def records(labels: list[int], events: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"bag_id": [f"b{i}" for i in range(len(labels))],
                             "case_id": [f"c{i}" for i in range(len(labels))], "label": labels, "event": events})

    task = SurvivalTask()
    fine = records([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])
    assert task.strata(fine, 3)["label"].tolist() == [0, 0, 0, 1, 1, 1]          # bin × event
    coarse = records([0, 1, 2, 3, 4, 5], [1, 1, 1, 0, 0, 0])
    assert task.strata(coarse, 3)["label"].tolist() == [1, 1, 1, 0, 0, 0]        # the event alone
    tiny = records([0, 1, 2, 3, 4, 5], [1, 1, 1, 1, 1, 0])
    assert task.strata(tiny, 3)["label"].tolist() == [0] * 6                      # one censored case: unstratified
