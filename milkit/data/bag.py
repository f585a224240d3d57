"""One bag as a dataset item, and the padding collate that turns a list of bags into a ``BagBatch``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from milkit.types import BagBatch

__all__ = ["Bag", "collate_bags", "subsample_bag"]


@dataclass
class Bag:
    """A single bag. Shapes: features ``(N, D)`` float32, coords ``(N, 2)``, instance_labels ``(N,)`` long,
    slide_index ``(N,)`` long (slide of origin within a patient-level bag). ``label``: a class index, or
    ``(time, event)`` for survival."""

    features: Tensor
    label: int | tuple[float, float] | None
    bag_id: str
    coords: Tensor | None = None
    instance_labels: Tensor | None = None
    slide_index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


def subsample_bag(bag: Bag, max_instances: int, generator: torch.Generator | None = None) -> Bag:
    """Random subset of at most ``max_instances`` instances, kept in their original order."""
    n = len(bag)
    if max_instances <= 0 or n <= max_instances:
        return bag
    idx = torch.randperm(n, generator=generator)[:max_instances].sort().values
    pick = lambda t: None if t is None else t[idx]  # noqa: E731
    return Bag(bag.features[idx], bag.label, bag.bag_id, pick(bag.coords), pick(bag.instance_labels),
               pick(bag.slide_index))


def collate_bags(bags: Sequence[Bag]) -> BagBatch:
    """Right-pad bags to the longest one. Padding: features 0, coords 0, instance labels -1, mask False.
    A single bag needs no padding: its features become ``x`` as a view (no copy of the ``(N, D)`` array, which
    at WSI scale is a large share of a DataLoader worker's time)."""
    b, n_max, d = len(bags), max(len(bag) for bag in bags), bags[0].features.shape[1]
    one = b == 1
    x = bags[0].features.unsqueeze(0) if one else torch.zeros(b, n_max, d, dtype=bags[0].features.dtype)
    mask = torch.full((b, n_max), one, dtype=torch.bool)
    has_coords = all(bag.coords is not None for bag in bags)
    has_inst = any(bag.instance_labels is not None for bag in bags)
    coords = torch.zeros(b, n_max, 2, dtype=torch.float32) if has_coords else None
    inst = torch.full((b, n_max), -1, dtype=torch.long) if has_inst else None
    for i, bag in enumerate(bags):
        n = len(bag)
        if not one:
            x[i, :n] = bag.features
            mask[i, :n] = True
        if coords is not None:
            coords[i, :n] = bag.coords.to(torch.float32)
        if inst is not None and bag.instance_labels is not None:
            inst[i, :n] = bag.instance_labels
    labels = [bag.label for bag in bags]
    survival = isinstance(labels[0], tuple)  # (time, event) → (B, 2) float
    y = None if any(label is None for label in labels) else torch.as_tensor(
        labels, dtype=torch.float32 if survival else torch.long)
    return BagBatch(x=x, mask=mask, y=y, coords=coords, instance_y=inst, ids=[bag.bag_id for bag in bags])
