"""train(cfg) under task=survival on the synthetic cohort: learning, bins, outputs, eval round trip, methods."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from milkit.errors import ConfigError
from milkit.tasks.survival_data import quantile_edges
from milkit.training.checkpoint import load_checkpoint
from milkit.training.evaluate import evaluate
from milkit.training.train import train
from unit_tests.training.conftest import compose_cfg

DATA = ["data=synthetic_survival", "data.source.n_patients=160", "data.source.min_size=20", "data.source.max_size=60",
        "data.source.symmetric=false"]  # the easier research-note design keeps the CI run short
SMALL = ["task=survival", *DATA, "trainer.max_epochs=10", "trainer.min_epochs=10", "cv.folds=4", "cv.run_folds=[0]",
         "task.bootstrap=200", "optimizer.lr=1e-3"]
ABMIL = ["model=abmil", "model.embed_dims=[16]", "model.attn_dim=8", "model.dropout=0.0"]


def run(tmp_path: Path, *overrides: str, name: str = "run") -> tuple[dict, Path]:
    if not any(o.startswith("model=") for o in overrides):
        overrides = (*ABMIL, *overrides)
    cfg = compose_cfg(SMALL + list(overrides), tmp_path / name)
    return train(cfg), tmp_path / name


def test_survival_training_learns_and_writes_outputs(tmp_path: Path) -> None:
    summary, out = run(tmp_path)
    row = summary["folds"][0]
    assert row["test/cindex"] > 0.68, row          # 0.76 here; oracle 0.82; chance 0.5
    assert row["test/cindex_ci95_low"] < row["test/cindex"] < row["test/cindex_ci95_high"]
    assert row["test/oracle_cindex"] > 0.7 and 0 < row["test/ibs"] < 0.5 and 0.5 < row["test/td_auc"] <= 1
    preds = pd.read_csv(out / "fold0" / "test_predictions.csv")
    assert list(preds.columns) == ["bag_id", "time", "event", "risk", "S_0", "S_1", "S_2", "S_3"]
    np.testing.assert_allclose(preds["risk"], -preds[["S_0", "S_1", "S_2", "S_3"]].sum(1), rtol=1e-5)
    assert (np.diff(preds[["S_0", "S_1", "S_2", "S_3"]].to_numpy(), axis=1) <= 1e-7).all()  # S decreases
    splits = pd.read_csv(out / "splits.csv").query("fold == 0")
    assert set(preds["bag_id"]) == set(splits.query("split == 'test'")["bag_id"])
    assert splits.groupby("case_id")["split"].nunique().max() == 1
    # bins of the loss: quantiles of the *training* fold's uncensored times
    info = torch.load(out / "fold0" / "checkpoints" / "best.ckpt", weights_only=False)["milkit"]
    loaded = load_checkpoint(out / "fold0" / "checkpoints" / "best.ckpt")
    from milkit.data.synthetic_survival import SyntheticSurvivalSource
    from milkit.tasks import SurvivalTask

    records = SurvivalTask().prepare(SyntheticSurvivalSource(160, min_size=20, max_size=60, symmetric=False,
                                                             seed=0)).records
    train_ids = set(splits.query("split == 'train'")["bag_id"])
    tr = records[records["bag_id"].isin(train_ids)]
    train_edges = quantile_edges(tr["time"].to_numpy(), tr["event"].to_numpy(), 4, "x")
    np.testing.assert_allclose(info["task"]["inner_edges"], train_edges)
    assert not np.allclose(info["task"]["inner_edges"], quantile_edges(records["time"].to_numpy(),
                                                                       records["event"].to_numpy(), 4, "x"))
    assert loaded.task.inner_edges == info["task"]["inner_edges"] and loaded.model.num_classes == 4
    bags = SurvivalTask().prepare(SyntheticSurvivalSource(160, min_size=20, max_size=60, symmetric=False, seed=0))
    reported = loaded.predict(bags.load(preds["bag_id"][0]))  # what slide inference reports
    assert float(reported["risk"]) == pytest.approx(preds["risk"][0], rel=1e-5)
    np.testing.assert_allclose(reported["survival"].numpy(), preds.loc[0, ["S_0", "S_1", "S_2", "S_3"]].to_numpy(float),
                               rtol=1e-5)
    assert (out / "km_test.png").stat().st_size > 1000 and 0 <= summary["logrank_p"] <= 1

    # checkpoint → eval.py on the same fold's test split gives the training run's test risks
    ecfg = compose_cfg([f"ckpt_path={out / 'fold0' / 'checkpoints' / 'best.ckpt'}", f"splits_csv={out / 'splits.csv'}",
                        "fold=0", "split=test"], tmp_path / "eval", config_name="eval")
    result = evaluate(ecfg)
    again = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("bag_id").loc[preds["bag_id"]]
    np.testing.assert_allclose(again["risk"], preds["risk"], rtol=1e-5, atol=1e-6)
    assert result["eval/cindex"] == pytest.approx(row["test/cindex"], abs=1e-6)


def test_bins_from_cohort_reproduces_upstream(tmp_path: Path) -> None:
    _, out = run(tmp_path, "task.bins_from=cohort", "trainer.max_epochs=1", "trainer.min_epochs=1",
                 "task.km_plot=false")
    from milkit.data.synthetic_survival import SyntheticSurvivalSource
    from milkit.tasks import SurvivalTask

    records = SurvivalTask().prepare(SyntheticSurvivalSource(160, min_size=20, max_size=60, symmetric=False,
                                                             seed=0)).records
    info = torch.load(out / "fold0" / "checkpoints" / "best.ckpt", weights_only=False)["milkit"]
    np.testing.assert_allclose(info["task"]["inner_edges"], quantile_edges(records["time"].to_numpy(),
                                                                           records["event"].to_numpy(), 4, "x"))
    assert not (out / "km_test.png").exists()


@pytest.mark.parametrize("overrides", [
    ["task.loss=cox", "data.batch_size=16", "monitor=val/cindex", "monitor_mode=max"],
    ["method=mhim", "method.score=class_aware"],
    ["method=mhim_v2", "method.grn_dim_head=8", "method.grn_heads=2"],
    ["model=dsmil", "model.embed_dims=[16]", "model.q_dim=8"],
    ["model=clam_sb", "model.embed_dim=16", "model.attn_dim=8", "model.k_sample=2"],
])
def test_other_losses_methods_and_models_train_under_survival(tmp_path: Path, overrides: list[str]) -> None:
    summary, _ = run(tmp_path, "trainer.max_epochs=2", "trainer.min_epochs=2", "task.bootstrap=0",
                     "task.km_plot=false", *overrides)
    row = summary["folds"][0]
    assert np.isfinite(row["test/cindex"]) and 0 <= row["test/cindex"] <= 1
    assert np.isfinite(row["best_" + ("val/cindex" if "task.loss=cox" in overrides else "val/loss")])


def test_survival_cohort_needs_task_survival(tmp_path: Path) -> None:
    cfg = compose_cfg(DATA, tmp_path / "x")
    with pytest.raises(ConfigError, match="this data config needs task=survival"):
        train(cfg)


def test_continual_rejects_survival(tmp_path: Path) -> None:
    from milkit.continual import run_continual

    cfg = compose_cfg(["task=survival"], tmp_path / "c", config_name="continual")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "c")
    with pytest.raises(ConfigError, match="continual learning supports task=classification only"):
        run_continual(cfg)
