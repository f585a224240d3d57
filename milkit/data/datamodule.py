"""Bag datasets and the LightningDataModule for one fold of a split table."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from milkit.data.bag import Bag, collate_bags, subsample_bag
from milkit.data.sources import BagSource
from milkit.errors import DataError
from milkit.utils.workers import worker_init

__all__ = ["BagDataset", "MILDataModule", "FeatureStats"]


class FeatureStats:
    """Per-dimension mean/std of training instances (standardisation without test leakage)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std.clamp_min(1e-6)

    @classmethod
    def of(cls, bags: Sequence[Bag]) -> "FeatureStats":
        x = torch.cat([b.features.double() for b in bags])
        return cls(x.mean(0).float(), x.std(0, unbiased=False).float())

    def __call__(self, bag: Bag) -> Bag:
        return replace(bag, features=(bag.features - self.mean) / self.std)


class BagDataset(Dataset):
    """Bags ``bag_ids`` of a source, optionally standardised and randomly subsampled (training only)."""

    def __init__(self, source: BagSource, bag_ids: Sequence[str], max_instances: int | None = None,
                 stats: FeatureStats | None = None) -> None:
        self.source, self.bag_ids = source, list(bag_ids)
        self.max_instances, self.stats = max_instances, stats

    def __len__(self) -> int:
        return len(self.bag_ids)

    def __getitem__(self, i: int) -> Bag:
        bag = self.source.load(self.bag_ids[i])
        if self.stats is not None:
            bag = self.stats(bag)
        if self.max_instances:
            bag = subsample_bag(bag, self.max_instances)
        return bag


class MILDataModule(L.LightningDataModule):
    """Loaders for the train / val / test bags of one fold.

    Args:
        source: the bag source.
        fold_splits: rows of the split table for this fold (``bag_id, split``).
        batch_size: bags per training batch (padded with masks); evaluation uses ``eval_batch_size``.
        max_instances: random subsample of at most this many instances per training bag (None = all).
        standardize: z-score features with statistics of this fold's training instances.
        num_workers: DataLoader workers.
        balanced_sampler: draw training bags with replacement, weighted by 1 / (size of their group), one epoch =
            as many draws as training bags (CLAM / MambaMIL ``--weighted_sample``); the groups come from the task
            (``set_sample_groups``: the class, or the survival bin × event).
    """

    def __init__(self, source: BagSource, fold_splits: pd.DataFrame, batch_size: int = 1,
                 eval_batch_size: int = 1, max_instances: int | None = None, standardize: bool = False,
                 num_workers: int = 0, balanced_sampler: bool = False) -> None:
        super().__init__()
        self.source = source
        self.ids = {s: fold_splits.loc[fold_splits["split"] == s, "bag_id"].tolist() for s in ("train", "val", "test")}
        if not self.ids["train"]:
            raise DataError("the split for this fold has no training bags")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_instances, self.standardize, self.num_workers = max_instances, standardize, num_workers
        self.stats: FeatureStats | None = None
        self.balanced_sampler = balanced_sampler
        self.sample_weights: torch.Tensor | None = None

    def set_sample_groups(self, groups: pd.Series) -> None:
        """Group key per training bag (indexed by ``bag_id``); weights ``1 / group size`` for the balanced sampler."""
        keys = groups.loc[self.ids["train"]]
        self.sample_weights = torch.tensor((1.0 / keys.map(keys.value_counts())).to_numpy(float), dtype=torch.double)

    def setup(self, stage: str | None = None) -> None:
        if self.standardize and self.stats is None:
            self.stats = FeatureStats.of([self.source.load(b) for b in self.ids["train"]])

    def dataset(self, split: str, train: bool = False) -> BagDataset:
        return BagDataset(self.source, self.ids[split], self.max_instances if train else None, self.stats)

    def _loader(self, split: str, train: bool) -> DataLoader:
        sampler = None
        if train and self.balanced_sampler:
            if self.sample_weights is None:
                raise DataError("data.balanced_sampler needs the training bags' groups (set_sample_groups)")
            sampler = WeightedRandomSampler(self.sample_weights, len(self.sample_weights), replacement=True)
        return DataLoader(self.dataset(split, train), batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train and sampler is None, sampler=sampler, collate_fn=collate_bags,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, worker_init_fn=worker_init())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def has(self, split: str) -> bool:
        return bool(self.ids[split])
