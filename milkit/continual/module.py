"""The LightningModule that trains one task of a continual sequence with a ``ContinualMethod``."""
from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch

from milkit.continual.methods.base import ContinualMethod
from milkit.models.base import MILModel
from milkit.training.methods.base import StepContext
from milkit.types import BagBatch

__all__ = ["ContinualTaskModule"]


class ContinualTaskModule(L.LightningModule):
    """Optimises ``method.trainable_parameters(model)`` on one task; gradient hooks go through the method.

    Args:
        model: the MIL model (its head is the method's ``TaskHeads``).
        method: the continual method, already told about the task (``begin_task``).
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``optimizer -> LRScheduler`` stepped once per epoch, or None.
    """

    def __init__(self, model: MILModel, method: ContinualMethod, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.model, self.method = model, method
        self._optimizer, self._scheduler = optimizer, scheduler

    def _ctx(self) -> StepContext:
        return StepContext(global_step=self.global_step, epoch=self.current_epoch,
                           max_steps=int(self.trainer.estimated_stepping_batches),
                           max_epochs=int(self.trainer.max_epochs or 1))

    def training_step(self, batch: BagBatch, batch_idx: int) -> torch.Tensor:
        result = self.method.training_step(self.model, batch, self._ctx())
        if self.logger is not None:  # logging costs milliseconds per step; the runner trains without a logger
            self.log_dict({f"train/{k}": v for k, v in result.logs.items()}, batch_size=len(batch))
        return result.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.method.before_optimizer_step(self.model)

    def on_train_batch_end(self, outputs: Any, batch: BagBatch, batch_idx: int) -> None:
        self.method.on_optimizer_step(self.model, self._ctx())

    def on_train_epoch_end(self) -> None:
        self.method.on_train_epoch_end()

    def transfer_batch_to_device(self, batch: BagBatch, device: torch.device, dataloader_idx: int) -> BagBatch:
        return batch.to(device)

    def configure_optimizers(self) -> Any:
        opt = self._optimizer(self.method.trainable_parameters(self.model))
        if self._scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self._scheduler(opt), "interval": "epoch"}}
