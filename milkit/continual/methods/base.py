"""Continual training methods: the task-boundary hooks, per-task heads, and sequential fine-tuning.

A continual method is a ``TrainingMethod`` (same per-step interface as the rest of milkit) with task hooks that
the continual runner calls::

    for t, task in enumerate(tasks):
        method.begin_task(model, t, task.num_classes)     # add a head, adapters; choose what trains
        ... optimise method.trainable_parameters(model) with method.training_step / before_optimizer_step ...
        method.end_task(model, t, train_loader, device)   # Fisher, teacher snapshot, SVD compression

Heads are class-incremental: task t gets its own ``Linear(E, C_t)``; the logits of all seen heads are concatenated,
so task t's classes are global labels ``offset_t .. offset_t + C_t - 1`` and no task identity is needed at test
time. Earlier heads are frozen when a new task starts (as in the official code).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from milkit.continual.bppl import BPPL
from milkit.errors import ConfigError
from milkit.models.base import MILModel
from milkit.training.methods.base import StepContext, StepResult, TrainingMethod, model_losses, task_loss
from milkit.types import BagBatch

__all__ = ["TaskHeads", "ContinualMethod", "FineTune"]


class TaskHeads(nn.Module):
    """One linear head per task; ``forward`` concatenates their logits ``(B, Σ_t C_t)``."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.heads = nn.ModuleList()

    def add(self, num_classes: int, head: nn.Linear | None = None) -> nn.Linear:
        head = head if head is not None else nn.Linear(self.in_features, num_classes)
        if head.in_features != self.in_features or head.out_features != num_classes:
            raise ConfigError(f"task head must be Linear({self.in_features}, {num_classes}), got {head}")
        self.heads.append(head)
        return head

    @property
    def offsets(self) -> list[int]:
        """Global index of each task's first class."""
        sizes = [h.out_features for h in self.heads]
        return [sum(sizes[:i]) for i in range(len(sizes))]

    @property
    def num_classes(self) -> int:
        return sum(h.out_features for h in self.heads)

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([head(z) for head in self.heads], dim=-1)


class ContinualMethod(TrainingMethod):
    """Base continual method = sequential fine-tuning: every backbone parameter and the newest head train.

    Args:
        bppl: keyword arguments of ``BPPL`` to add the bag-prototype instance loss, or None.
    """

    def __init__(self, bppl: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.bppl = BPPL(**bppl) if bppl else None
        self.task = -1
        self.offset = 0

    # ---- task boundaries ---------------------------------------------------------------------------
    def begin_task(self, model: MILModel, task: int, num_classes: int) -> None:
        """Add task ``task``'s head (replacing the model's head by ``TaskHeads`` on the first task)."""
        heads = model.head
        if not isinstance(heads, TaskHeads):
            if not isinstance(heads, nn.Linear):
                raise ConfigError(f"continual learning needs a model whose head is one nn.Linear, "
                                  f"got {type(heads).__name__}")
            model.head = TaskHeads(heads.in_features)
            first = heads if heads.out_features == num_classes else None
            model.head.add(num_classes, first)
        else:
            model.head.add(num_classes).to(next(model.parameters()).device)
        if len(model.head.heads) != task + 1:
            raise ConfigError(f"begin_task({task}) called on a model with {len(model.head.heads)} heads")
        self.task, self.offset = task, model.head.offsets[task]
        model.requires_grad_(True)
        for old in model.head.heads[:-1]:
            old.requires_grad_(False)
        self.configure_trainable(model)

    def configure_trainable(self, model: MILModel) -> None:
        """Hook: restrict ``requires_grad`` further (adapter methods freeze the backbone here)."""

    def trainable_parameters(self, model: MILModel) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def end_task(self, model: MILModel, task: int, loader: Iterable[BagBatch], device: torch.device) -> dict[str, Any]:
        """Hook after training task ``task``; returns anything worth recording."""
        return {}

    # ---- optimisation ------------------------------------------------------------------------------
    def regularizers(self, model: MILModel, batch: BagBatch, out) -> dict[str, Tensor]:
        """Hook: method-specific loss terms (already weighted)."""
        return {}

    def training_step(self, model: MILModel, batch: BagBatch, ctx: StepContext) -> StepResult:
        out = model(batch.x, batch.mask, batch.coords)
        loss = task_loss(out.logits, batch.y)
        logs = {"task_loss": loss.detach()}
        terms = {**model_losses(model, out, batch.y), **self.regularizers(model, batch, out)}
        if self.bppl is not None:
            terms["bppl"], bppl_logs = self.bppl(out, batch.mask, batch.y, batch.y - self.offset)
            logs.update(bppl_logs)
        for name, value in terms.items():
            loss = loss + value
            logs[name] = value.detach()
        return StepResult(loss=loss, output=out, logs=logs)

    def before_optimizer_step(self, model: MILModel) -> None:
        """Hook between ``backward`` and the optimiser step (gradient projection)."""

    def on_train_epoch_end(self) -> None:
        if self.bppl is not None:
            self.bppl.end_epoch()


class FineTune(ContinualMethod):
    """Sequential fine-tuning (``method=finetune``): the lower bound every continual method is compared with."""
