"""Patient-level, stratified, seeded cross-validation splits, saved as CSV and reusable.

The split table has one row per (fold, bag): ``fold, bag_id, case_id, label, split`` with split in
{train, val, test}. For ``K`` folds, fold ``k`` tests on case-group ``k``, validates on group ``(k+1) mod K``
and trains on the rest, so train / validation / test are always disjoint and validation is never the test set.
A cohort table with its own ``split`` column gives a single predefined fold; when it has train and test only (the
official CAMELYON16 split), a seeded, stratified share of the training cases becomes the validation set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from milkit.data.tables import read_table
from milkit.errors import DataError
from milkit.utils.io import atomic_path

__all__ = ["make_cv_splits", "predefined_split", "check_splits", "load_splits", "save_splits", "SPLITS"]

SPLITS = ("train", "val", "test")


def _case_table(records: pd.DataFrame) -> pd.DataFrame:
    labels = records.groupby("case_id")["label"].nunique()
    if (labels > 1).any():
        raise DataError(f"case '{labels[labels > 1].index[0]}' has bags with different labels; "
                        "patient-level stratification needs one label per case")
    return records.groupby("case_id", sort=True)["label"].first().reset_index()


def make_cv_splits(records: pd.DataFrame, folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Stratified K-fold over cases (``records`` needs ``bag_id, case_id, label``)."""
    if folds < 3:
        raise DataError(f"cv.folds must be >= 3 (test, validation and training groups), got {folds}")
    cases = _case_table(records)
    smallest = cases["label"].value_counts().min()
    if smallest < folds:
        raise DataError(f"cv.folds={folds} but the rarest class has only {smallest} cases")
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    group_of = np.empty(len(cases), dtype=int)
    for k, (_, test_idx) in enumerate(sgkf.split(cases, cases["label"], groups=cases["case_id"])):
        group_of[test_idx] = k
    case_group = dict(zip(cases["case_id"], group_of))
    rows = []
    for k in range(folds):
        val_group = (k + 1) % folds
        for r in records.itertuples(index=False):
            g = case_group[r.case_id]
            split = "test" if g == k else "val" if g == val_group else "train"
            rows.append((k, r.bag_id, r.case_id, r.label, split))
    return pd.DataFrame(rows, columns=["fold", "bag_id", "case_id", "label", "split"])


def predefined_split(records: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """One fold from the cohort table's own ``split`` column. Without ``val`` rows, ``val_fraction`` of the
    training cases of each class (at least one, drawn with ``seed``) validate, so the test set never does."""
    bad = set(records["split"]) - set(SPLITS)
    if bad:
        raise DataError(f"cohort 'split' column has unknown values {sorted(bad)} (use train/val/test)")
    out = records[["bag_id", "case_id", "label", "split"]].copy()
    if not (out["split"] == "val").any():
        train_cases = _case_table(out[out["split"] == "train"])
        rng = np.random.default_rng(seed)
        val_cases = [c for _, g in train_cases.groupby("label") for c in
                     rng.permutation(g["case_id"].to_numpy())[:max(1, round(val_fraction * len(g)))]]
        out.loc[out["case_id"].isin(val_cases) & (out["split"] == "train"), "split"] = "val"
    out.insert(0, "fold", 0)
    return out


def check_splits(splits: pd.DataFrame, where: str = "splits") -> pd.DataFrame:
    """Every fold must put each case in exactly one split and have non-empty train and val."""
    for fold, df in splits.groupby("fold"):
        per_case = df.groupby("case_id")["split"].unique()
        mixed = per_case[per_case.map(len) > 1]
        if len(mixed):
            raise DataError(f"{where}: case '{mixed.index[0]}' is in both {' and '.join(mixed.iloc[0])} of fold {fold}")
        for s in ("train", "val"):
            if not (df["split"] == s).any():
                raise DataError(f"{where}: fold {fold} has no '{s}' bags")
    return splits


def save_splits(splits: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        splits.to_csv(tmp, index=False)
    return Path(path)


def load_splits(path: str | Path, records: pd.DataFrame) -> pd.DataFrame:
    """Read a saved split table and check it against the source's bags."""
    splits = read_table(path, "split CSV", ("fold", "bag_id", "case_id", "split"), {"bag_id": str, "case_id": str})
    unknown = set(splits["bag_id"]) - set(records["bag_id"])
    if unknown:
        raise DataError(f"{path}: bag '{sorted(unknown)[0]}' is not in the data source")
    splits = splits.drop(columns=[c for c in ("label",) if c in splits]).merge(
        records[["bag_id", "label"]], on="bag_id")
    return check_splits(splits, str(path))
