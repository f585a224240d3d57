"""data.balanced_sampler: training bags drawn with weight 1 / group size (class, or survival bin × event)."""
from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch

from milkit.data.datamodule import MILDataModule
from milkit.data.synthetic import SyntheticSource
from milkit.data.synthetic_survival import SyntheticSurvivalSource
from milkit.errors import DataError
from milkit.tasks import ClassificationTask, SurvivalTask
from milkit.training.train import train
from unit_tests.training.conftest import compose_cfg


def imbalanced_source() -> tuple[SyntheticSource, pd.DataFrame]:
    """40 training bags, 36 of class 0 and 4 of class 1 (all bags train; val/test ids reuse two bags)."""
    source = SyntheticSource(n_bags=40, max_size=8)
    labels = [1 if i < 4 else 0 for i in range(40)]
    source.records["label"] = labels
    splits = pd.DataFrame({"bag_id": source.records["bag_id"], "split": "train"})
    splits.loc[0, "split"], splits.loc[4, "split"] = "val", "test"
    return source, splits


def test_balanced_sampler_draws_classes_equally_with_replacement() -> None:
    source, splits = imbalanced_source()
    dm = MILDataModule(source, splits, batch_size=1, balanced_sampler=True)
    train_records = source.records[source.records["bag_id"].isin(dm.ids["train"])]
    dm.set_sample_groups(ClassificationTask().sample_groups(train_records))
    weights = dm.sample_weights
    assert len(weights) == 38 and torch.isclose(weights[0], torch.tensor(1 / 3, dtype=torch.double))  # 3 of class 1
    assert torch.isclose(weights[-1], torch.tensor(1 / 35, dtype=torch.double))
    label = dict(zip(source.records["bag_id"], source.records["label"]))
    torch.manual_seed(0)
    drawn = Counter(label[bid] for _ in range(20) for batch in dm.train_dataloader() for bid in batch.ids)
    assert sum(drawn.values()) == 20 * 38                      # one epoch = as many draws as training bags
    assert 0.42 < drawn[1] / sum(drawn.values()) < 0.58, drawn  # 3 of 38 bags, half of the draws
    plain = MILDataModule(source, splits, batch_size=1)
    assert Counter(label[b] for batch in plain.train_dataloader() for b in batch.ids)[1] == 3


def test_balanced_sampler_without_groups_is_an_error() -> None:
    source, splits = imbalanced_source()
    with pytest.raises(DataError, match="balanced_sampler"):
        MILDataModule(source, splits, balanced_sampler=True).train_dataloader()


def test_survival_groups_are_training_fold_bin_by_event() -> None:
    task = SurvivalTask()
    bags = task.prepare(SyntheticSurvivalSource(60, min_size=5, max_size=10, seed=1))
    recs = bags.records
    train_records = recs.iloc[:40]
    task.fit(train_records)
    groups = task.sample_groups(train_records)
    edges = task.inner_edges
    expected = [sum(t >= e for e in edges) * 2 + ev for t, ev in zip(train_records["time"], train_records["event"])]
    assert list(groups.index) == list(train_records["bag_id"]) and groups.tolist() == expected
    assert set(groups) <= set(range(8)) and groups.nunique() > 4


def test_balanced_sampler_trains_from_the_config(tmp_path) -> None:
    cfg = compose_cfg(["task=survival", "data=synthetic_survival", "data.source.n_patients=60",
                       "data.source.min_size=10", "data.source.max_size=20",
                       "data.balanced_sampler=true", "model=mean", "model.embed_dims=[8]",
                       "trainer.max_epochs=1", "cv.folds=3", "cv.run_folds=[0]", "task.bootstrap=0",
                       "task.km_plot=false"], tmp_path / "run")
    assert 0.0 <= train(cfg)["folds"][0]["test/cindex"] <= 1.0
    recipe = compose_cfg(["experiment=survival_mambamil"], tmp_path / "recipe")
    assert recipe.data.balanced_sampler is True
    assert compose_cfg(["experiment=mambamil_nsclc"], tmp_path / "nsclc").data.balanced_sampler is True
    assert compose_cfg([], tmp_path / "default").data.balanced_sampler is False

