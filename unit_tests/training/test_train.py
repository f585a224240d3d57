"""train(cfg) end to end on tiny configs; reproducibility; checkpoint → rebuild → same predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from milkit.errors import ConfigError
from milkit.training.checkpoint import load_checkpoint
from milkit.training.train import train


def test_train_end_to_end_writes_outputs(make_cfg, tmp_path) -> None:
    cfg = make_cfg()
    summary = train(cfg)
    out = tmp_path / "run"
    assert set(summary) >= {"folds", "test/auroc", "test/acc", "test/bacc", "test/f1", "objective"}
    row = summary["folds"][0]
    assert 0.0 <= row["test/auroc"] <= 1.0 and row["epochs"] >= 1
    assert json.loads((out / "results.json").read_text())["folds"][0]["fold"] == "fold0"
    splits = pd.read_csv(out / "splits.csv")
    assert set(splits["split"]) == {"train", "val", "test"}
    preds = pd.read_csv(out / "fold0" / "test_predictions.csv")
    assert len(preds) == (splits.query("fold == 0")["split"] == "test").sum()
    assert (out / "fold0" / "metrics.csv").exists() and (out / "fold0" / "checkpoints" / "best.ckpt").exists()


def test_seeded_runs_are_reproducible(make_cfg) -> None:
    a = train(make_cfg(name="a"))["folds"][0]
    b = train(make_cfg(name="b"))["folds"][0]
    for key in ("test/auroc", "test/acc", "best_val/loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-6)


def test_checkpoint_rebuild_gives_same_predictions(make_cfg, tmp_path) -> None:
    cfg = make_cfg("data.standardize=true")
    summary = train(cfg)
    loaded = load_checkpoint(summary["folds"][0]["checkpoint"])
    assert loaded.class_names == ["negative", "class1"] and loaded.stats is not None
    preds = pd.read_csv(tmp_path / "run" / "fold0" / "test_predictions.csv")
    from hydra.utils import instantiate
    source = instantiate(cfg.data.source)
    for row in preds.itertuples():
        probs = loaded.predict_bag(source.load(row.bag_id))
        torch.testing.assert_close(probs, torch.tensor([row.prob_0, row.prob_1]), atol=1e-5, rtol=1e-5)


def test_in_dim_mismatch_fails_before_training(make_cfg) -> None:
    cfg = make_cfg("data.in_dim=31")
    with pytest.raises(ConfigError, match="model.in_dim=31 but the features of 'synthetic' have D=32"):
        train(cfg)


def test_multiclass_training_learns_three_classes(make_cfg, tmp_path) -> None:
    summary = train(make_cfg("data.num_classes=3", "data.source.n_bags=90", "data.source.signal=4.0",
                             "optimizer.lr=1e-3", "trainer.max_epochs=30", "callbacks.early_stopping.patience=30"))
    assert summary["test/auroc"]["mean"] > 0.7  # macro one-vs-rest; chance is 0.5
    preds = pd.read_csv(tmp_path / "run" / "fold0" / "test_predictions.csv")
    probs = preds[["prob_0", "prob_1", "prob_2"]].to_numpy()
    assert set(preds["label"]) == {0, 1, 2} and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_padded_batches_and_subsampling(make_cfg) -> None:
    from milkit.data.datamodule import MILDataModule
    from milkit.data.synthetic import SyntheticSource
    from milkit.data.splits import make_cv_splits

    source = SyntheticSource(n_bags=24, max_size=16)
    splits = make_cv_splits(source.records, 3, 0)
    dm = MILDataModule(source, splits[splits["fold"] == 0], batch_size=4, max_instances=6)
    batch = next(iter(dm.train_dataloader()))
    assert batch.x.shape[0] == 4 and batch.x.shape[1] <= 6 and batch.mask.sum(1).max() <= 6
    full = next(iter(dm.test_dataloader()))  # evaluation sees whole bags
    bag = source.load(full.ids[0])
    assert full.mask.sum() == bag.features.shape[0]
    summary = train(make_cfg("data.batch_size=4", "data.max_instances=6", "trainer.max_epochs=30", "optimizer.lr=1e-3",
                             "data.source.n_bags=60",
                             "data.source.signal=4.0", "callbacks.early_stopping.patience=30"))
    assert summary["folds"][0]["test/auroc"] > 0.7  # learns (chance 0.5) from 6-instance subsamples


HOOK_CALLS: list = []


def record_before(cfg) -> None:
    HOOK_CALLS.append(("before", cfg.seed))


def record_after(cfg, summary) -> dict:
    HOOK_CALLS.append(("after", len(summary["folds"])))
    return {"ok": True}


def test_hooks_run_around_training(make_cfg) -> None:
    HOOK_CALLS.clear()
    cfg = make_cfg("hooks.before={_target_: unit_tests.training.test_train.record_before, _partial_: true}",
                   "hooks.after={_target_: unit_tests.training.test_train.record_after, _partial_: true}")
    summary = train(cfg)
    assert HOOK_CALLS == [("before", 0), ("after", 1)] and summary["after"] == {"ok": True}


def test_repeated_cv_reports_std_over_repeat_means(make_cfg, tmp_path) -> None:
    summary = train(make_cfg("cv.repeats=2", "cv.run_folds=[0,1]"))
    assert [r["fold"] for r in summary["folds"]] == ["r0_fold0", "r0_fold1", "r1_fold0", "r1_fold1"]
    acc = [r["test/acc"] for r in summary["folds"]]
    repeat_means = [(acc[0] + acc[1]) / 2, (acc[2] + acc[3]) / 2]
    assert summary["test/acc"]["mean"] == pytest.approx(sum(acc) / 4)
    assert summary["test/acc"]["repeat_std"] == pytest.approx(abs(repeat_means[0] - repeat_means[1]) / 2 ** 0.5)
    r0, r1 = (pd.read_csv(tmp_path / "run" / f"r{k}_splits.csv") for k in (0, 1))
    assert not r0.equals(r1)  # each repeat reshuffles the folds
