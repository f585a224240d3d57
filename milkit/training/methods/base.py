"""Training methods: how one optimisation step uses a model (supervised, MHIM teacher–student, CoMEL ...).

A method is an ``nn.Module`` so that whatever it owns (a momentum teacher, global queries) is saved in
the checkpoint together with the student. The LightningModule calls, in order:
``setup(model)`` once, then per batch ``training_step`` → optimiser step → ``on_optimizer_step``;
validation/test/inference go through ``eval_forward``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.models.base import MILModel
from milkit.types import BagBatch, MILOutput

__all__ = ["StepContext", "StepResult", "TrainingMethod", "task_loss", "model_losses"]


@dataclass
class StepContext:
    """Where training stands; schedules (mask-ratio decay, EMA momentum) read it."""

    global_step: int = 0
    epoch: int = 0
    max_steps: int = 1
    max_epochs: int = 1

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.global_step / max(1, self.max_steps))


@dataclass
class StepResult:
    loss: Tensor
    output: MILOutput
    logs: dict[str, Tensor] = field(default_factory=dict)


def task_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy for ``C ≥ 2`` logits; binary cross-entropy on the single logit for ``C = 1``."""
    if logits.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def model_losses(model: MILModel, out: MILOutput, y: Tensor, task: Any = None) -> dict[str, Tensor]:
    """The model's own auxiliary losses: label-free (``out.aux_losses``) plus label-dependent ones."""
    return {**out.aux_losses, **model.target_losses(out, y, task)}


class TrainingMethod(nn.Module):
    """Base class; the default behaviour is plain supervised training."""

    #: requires ``MILOutput.instance_scores`` from the model (MHIM)
    needs_instance_scores: bool = False
    #: the ``milkit.tasks.Task`` whose loss is trained (set by the LightningModule; None = classification)
    task: Any = None

    def task_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The task's loss (cross-entropy when no task is set)."""
        return task_loss(logits, y) if self.task is None else self.task.loss(logits, y)

    def setup(self, model: MILModel) -> None:
        """Called once before training with the (student) model."""

    def training_step(self, model: MILModel, batch: BagBatch, ctx: StepContext) -> StepResult:
        out = model(batch.x, batch.mask, batch.coords)
        loss = self.task_loss(out.logits, batch.y)
        logs = {"task_loss": loss.detach()}
        for name, value in model_losses(model, out, batch.y, self.task).items():
            loss = loss + value
            logs[name] = value.detach()
        return StepResult(loss=loss, output=out, logs=logs)

    @torch.no_grad()
    def on_optimizer_step(self, model: MILModel, ctx: StepContext) -> None:
        """Called after every optimiser step (EMA teacher updates go here)."""

    def eval_forward(self, model: MILModel, batch: BagBatch) -> MILOutput:
        return model(batch.x, batch.mask, batch.coords)
