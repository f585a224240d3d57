"""Patient-level stratified splits, saved-split validation, padded collate and subsampling."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from milkit.data.bag import Bag, collate_bags, subsample_bag
from milkit.data.splits import load_splits, make_cv_splits, predefined_split, save_splits
from milkit.data.synthetic import SyntheticSource
from milkit.errors import DataError


def records(n_cases: int = 30, bags_per_case: int = 2) -> pd.DataFrame:
    return SyntheticSource(n_bags=n_cases * bags_per_case, in_dim=2, bags_per_case=bags_per_case).records


def test_cv_splits_are_disjoint_by_case_and_cover_everything() -> None:
    rec = records()
    splits = make_cv_splits(rec, folds=5, seed=3)
    tests = []
    for fold, df in splits.groupby("fold"):
        assert len(df) == len(rec)
        case_splits = df.groupby("case_id")["split"].nunique()
        assert (case_splits == 1).all()
        assert set(df["split"]) == {"train", "val", "test"}
        tests.append(set(df.loc[df["split"] == "test", "case_id"]))
        assert not set(df.loc[df["split"] == "val", "case_id"]) & tests[-1]
    assert set().union(*tests) == set(rec["case_id"])  # every case is tested exactly once
    assert sum(len(t) for t in tests) == rec["case_id"].nunique()


def test_cv_splits_are_stratified_and_seeded() -> None:
    rec = records(40)
    splits = make_cv_splits(rec, folds=4, seed=0)
    for _, df in splits[splits["split"] == "test"].groupby("fold"):
        assert df.groupby("case_id")["label"].first().mean() == pytest.approx(0.5, abs=0.1)
    pd.testing.assert_frame_equal(splits, make_cv_splits(rec, folds=4, seed=0))
    assert not splits.equals(make_cv_splits(rec, folds=4, seed=1))


def test_saved_splits_round_trip_and_leak_detection(tmp_path: Path) -> None:
    rec = records()
    splits = make_cv_splits(rec, folds=3)
    save_splits(splits, tmp_path / "splits.csv")
    pd.testing.assert_frame_equal(load_splits(tmp_path / "splits.csv", rec)[splits.columns], splits)
    bad = splits.copy()
    first_case = bad.loc[(bad["fold"] == 1) & (bad["split"] == "test"), "case_id"].iloc[0]
    idx = bad.index[(bad["fold"] == 1) & (bad["case_id"] == first_case)][0]
    bad.loc[idx, "split"] = "train"
    save_splits(bad, tmp_path / "bad.csv")
    with pytest.raises(DataError, match=rf"bad.csv: case '{first_case}' is in both .* of fold 1"):
        load_splits(tmp_path / "bad.csv", rec)


def test_official_train_test_split_validates_on_training_cases_only() -> None:
    """CAMELYON16-style table (train/test only): a seeded, per-class share of the training cases validates."""
    rec = pd.DataFrame({"bag_id": [f"b{i}" for i in range(40)], "case_id": [f"c{i // 2}" for i in range(40)],
                        "label": [(i // 2) % 2 for i in range(40)], "split": ["train"] * 30 + ["test"] * 10})
    out = predefined_split(rec, val_fraction=0.2, seed=1)
    val = out[out["split"] == "val"]
    assert (out.loc[out["split"] == "test", "bag_id"] == rec.loc[30:, "bag_id"]).all()  # test set untouched
    # 15 training cases: 8 of class 0, 7 of class 1 → round(1.6) and round(1.4) validate
    assert val.groupby("label")["case_id"].nunique().to_dict() == {0: 2, 1: 1}
    assert (out.groupby("case_id")["split"].nunique() == 1).all()  # both bags of a case move together
    assert out.equals(predefined_split(rec, 0.2, seed=1)) and not out.equals(predefined_split(rec, 0.2, seed=2))
    with_val = rec.assign(split=["train"] * 26 + ["val"] * 4 + ["test"] * 10)
    assert predefined_split(with_val)["split"].tolist() == with_val["split"].tolist()  # a given val is kept


def test_collate_pads_with_masks() -> None:
    bags = [Bag(torch.ones(3, 2), 1, "a", torch.ones(3, 2), torch.tensor([1, 0, 1])),
            Bag(2 * torch.ones(5, 2), 0, "b", torch.zeros(5, 2), None)]
    batch = collate_bags(bags)
    assert batch.x.shape == (2, 5, 2) and batch.ids == ["a", "b"]
    assert batch.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.equal(batch.x[0, 3:], torch.zeros(2, 2)) and batch.y.tolist() == [1, 0]
    assert batch.instance_y.tolist() == [[1, 0, 1, -1, -1], [-1] * 5]
    assert batch.lengths.tolist() == [3, 5]


def test_subsample_keeps_order_and_alignment() -> None:
    feats = torch.arange(20.0).unsqueeze(1)
    bag = Bag(feats, 1, "x", feats.repeat(1, 2).long(), torch.arange(20))
    sub = subsample_bag(bag, 6, torch.Generator().manual_seed(0))
    assert len(sub) == 6 and torch.all(sub.features[1:, 0] > sub.features[:-1, 0])
    assert torch.equal(sub.instance_labels, sub.features[:, 0].long())
    assert subsample_bag(bag, 50) is bag


def test_a_single_bag_is_collated_without_a_copy() -> None:
    bag = Bag(torch.randn(7, 3), 1, "b", torch.arange(14).reshape(7, 2), torch.tensor([0, 1, 0, 0, 1, 0, 0]))
    batch = collate_bags([bag])
    assert batch.x.shape == (1, 7, 3) and batch.x.data_ptr() == bag.features.data_ptr()
    assert batch.mask.all() and batch.y.tolist() == [1] and batch.ids == ["b"]
    padded = collate_bags([bag, Bag(torch.randn(2, 3), 0, "c", torch.zeros(2, 2))])  # padded: the same first row
    assert torch.equal(padded.x[0], batch.x[0]) and torch.equal(padded.coords[0], batch.coords[0])
    assert torch.equal(padded.instance_y[0], batch.instance_y[0]) and padded.mask[0].all()
