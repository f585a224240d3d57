"""A survival checkpoint on real slides: infer(cfg) reports the training run's risks and survival curves, with a
heatmap, and the CLI's outputs carry the survival columns."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from milkit.inference import infer
from unit_tests.inference.conftest import train_small_abmil


@pytest.fixture(scope="module")
def survival_run(cohort, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """One fold of task=survival (2 bins, one slide per patient) on the preprocessed synthetic slides."""
    root = tmp_path_factory.mktemp("survival_run")
    table = pd.read_csv(cohort.csv, dtype={"slide_id": str})
    table["survival_months"] = [4.0 + 9.0 * i for i in range(len(table))]
    table["event"] = [1, 1, 0, 1, 1, 1][: len(table)]
    csv = root / "survival.csv"
    table.drop(columns="label").to_csv(csv, index=False)
    run = train_small_abmil(cohort.features, csv, root, "task=survival", "task.n_bins=2", "task.bootstrap=0",
                            "task.km_plot=false")
    preds = pd.read_csv(run.run / "fold0" / "test_predictions.csv", dtype={"bag_id": str})
    preds["slide_id"] = preds["bag_id"].map(table.set_index("case_id")["slide_id"])  # one slide per case
    return run.checkpoint, preds


def test_survival_checkpoint_gives_the_training_risks_curves_and_heatmap(cohort, survival_run, tmp_path) -> None:
    ckpt, preds = survival_run
    ids = preds["slide_id"].tolist()
    slides = tmp_path / "slides.csv"
    pd.DataFrame({"path": [str(cohort.root / "slides" / f"{s}.tiff") for s in ids], "slide_id": ids}).to_csv(
        slides, index=False)
    summary = infer({"slide": str(slides), "checkpoint": str(ckpt), "output": str(tmp_path / "out"), "progress": False,
                     "reuse": False, "geojson": False, "montage": False})
    assert summary["n_ok"] == len(ids)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"slide_id": str}).set_index("slide_id")
    assert {"risk", "S_0", "S_1"} <= set(table.columns) and "prob_0" not in table.columns
    for row in preds.itertuples():
        rec = json.loads((tmp_path / "out" / "slides" / row.slide_id / "prediction.json").read_text())
        assert rec["task"] == "survival" and len(rec["bin_inner_edges"]) == 1
        # features recomputed from the slide: the same risk and S per bin as the training run's test step
        np.testing.assert_allclose(rec["risk"], row.risk, atol=1e-5)
        np.testing.assert_allclose(rec["survival_per_bin"], [row.S_0, row.S_1], atol=1e-5)
        np.testing.assert_allclose(table.loc[row.slide_id, ["risk", "S_0", "S_1"]].to_numpy(float),
                                   [row.risk, row.S_0, row.S_1], atol=1e-5)
        assert rec["risk"] == pytest.approx(-sum(rec["survival_per_bin"]), abs=1e-6)
        heatmap = cv2.imread(str(tmp_path / "out" / "slides" / row.slide_id / "heatmap.png"))
        assert heatmap is not None and heatmap.shape[0] > 10 and heatmap.std() > 0
