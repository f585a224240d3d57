"""Core data contracts shared by every part of milkit (see docs/architecture.md).

``BagBatch`` is what the collate function produces and what models, methods and metrics consume.
``MILOutput`` is what every registered model returns; its type never depends on flags.
``BagFeatures`` is the intermediate result of ``MILModel.forward_features``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

__all__ = ["BagBatch", "BagFeatures", "MILOutput"]


@dataclass
class BagBatch:
    """A collate of ``B`` right-padded bags.

    Shapes:
        x: ``(B, N_max, D)`` float; mask: ``(B, N_max)`` bool, True = real instance;
        y: ``(B,)`` long (or ``(B, 2)`` time/event); coords: ``(B, N_max, 2)``;
        instance_y: ``(B, N_max)`` long, -1 = unknown (also for padding).
    """

    x: Tensor
    mask: Tensor
    y: Tensor | None = None
    coords: Tensor | None = None
    instance_y: Tensor | None = None
    ids: list[str] = field(default_factory=list)

    @property
    def lengths(self) -> Tensor:
        """Number of real instances per bag, ``(B,)``."""
        return self.mask.sum(dim=1)

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "BagBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, x=move(self.x), mask=move(self.mask), y=move(self.y),
                       coords=move(self.coords), instance_y=move(self.instance_y))


@dataclass
class BagFeatures:
    """Output of ``forward_features``: everything a head (or a training method) needs.

    Shapes:
        bag_embedding: ``(B, D')``, or ``(B, C, D')`` for per-class embeddings (CLAM-MB, DSMIL);
        instance_scores: ``(B, N)`` raw (pre-softmax) attention or instance logits; padding = -inf.
    """

    bag_embedding: Tensor
    instance_scores: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MILOutput:
    """What every model's ``forward`` returns.

    Shapes:
        logits: ``(B, C)``; instance_scores: ``(B, N)`` with padded positions = -inf;
        bag_embedding: ``(B, D')`` (or ``(B, C, D')``).
    """

    logits: Tensor
    instance_scores: Tensor | None = None
    bag_embedding: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
