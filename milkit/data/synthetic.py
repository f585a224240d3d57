"""Synthetic bags with instance labels, for tests, demos and method sanity checks.

Background instances are ``N(0, I)``. A bag of class ``c ≥ 1`` contains a fraction ``witness_rate`` of
witnesses drawn from ``N(signal · u_c, I)`` with a fixed random unit direction ``u_c`` per class; class 0
bags hold no witnesses (the standard MIL assumption). ``instance_labels`` are the class of each witness and
0 for background. ``bags_per_case > 1`` groups consecutive bags of the same label into one case (patient),
to exercise patient-level splitting.
"""
from __future__ import annotations

import pandas as pd
import torch

from milkit.data.bag import Bag
from milkit.data.sources import BagSource
from milkit.errors import ConfigError

__all__ = ["SyntheticSource", "check_bag_sizes", "make_synthetic_bags"]


def check_bag_sizes(min_size: int, max_size: int) -> None:
    """Synthetic bag sizes are drawn from ``min_size..max_size``: both ≥ 1 and in that order."""
    if not 1 <= min_size <= max_size:
        raise ConfigError(f"data.source: bag sizes need 1 <= min_size <= max_size, got min_size={min_size}, "
                          f"max_size={max_size}")


def make_synthetic_bags(n_bags: int = 64, in_dim: int = 32, num_classes: int = 2, min_size: int = 8,
                        max_size: int = 32, witness_rate: float = 0.2, signal: float = 2.0, seed: int = 0,
                        bags_per_case: int = 1, with_coords: bool = True) -> tuple[list[Bag], list[str]]:
    """Return ``(bags, case_ids)``; labels cycle through the classes so the set is balanced."""
    check_bag_sizes(min_size, max_size)
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(num_classes, in_dim, generator=g), dim=1)
    bags, cases = [], []
    for i in range(n_bags):
        case = i // bags_per_case
        label = case % num_classes
        n = int(torch.randint(min_size, max_size + 1, (1,), generator=g))
        x = torch.randn(n, in_dim, generator=g)
        inst = torch.zeros(n, dtype=torch.long)
        if label > 0:
            k = max(1, round(witness_rate * n))
            idx = torch.randperm(n, generator=g)[:k]
            x[idx] += signal * directions[label]
            inst[idx] = label
        side = int(n ** 0.5) + 1
        coords = torch.stack([torch.arange(n) % side, torch.arange(n) // side], 1) * 256 if with_coords else None
        bags.append(Bag(x, label, f"bag{i:04d}", coords, inst))
        cases.append(f"case{case:04d}")
    return bags, cases


class SyntheticSource(BagSource):
    """``make_synthetic_bags`` as a bag source (all in memory)."""

    def __init__(self, n_bags: int = 64, in_dim: int = 32, num_classes: int = 2, min_size: int = 8,
                 max_size: int = 32, witness_rate: float = 0.2, signal: float = 2.0, seed: int = 0,
                 bags_per_case: int = 1) -> None:
        bags, cases = make_synthetic_bags(n_bags, in_dim, num_classes, min_size, max_size, witness_rate,
                                          signal, seed, bags_per_case)
        self.name = "synthetic"
        self.in_dim = in_dim
        self.class_names = ["negative"] + [f"class{c}" for c in range(1, num_classes)]
        self._bags = {b.bag_id: b for b in bags}
        self.records = pd.DataFrame({"bag_id": [b.bag_id for b in bags], "case_id": cases,
                                     "label": [b.label for b in bags],
                                     "label_name": [self.class_names[b.label] for b in bags]})

    def load(self, bag_id: str) -> Bag:
        return self._bags[bag_id]
