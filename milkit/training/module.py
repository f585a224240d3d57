"""The LightningModule: any registered model, trained by any training method.

Logged metrics: ``train/loss`` (+ each loss term), ``val/loss``, ``val/{auroc,acc,bacc,f1}`` and the same under
``test/``. The resolved run configuration is stored in every checkpoint under ``checkpoint["milkit"]`` so
that the model can be rebuilt from the checkpoint alone (``milkit.training.checkpoint.load_checkpoint``).
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor

from milkit.models.base import MILModel
from milkit.tasks import ClassificationTask, Task
from milkit.training.methods.base import StepContext, TrainingMethod
from milkit.types import BagBatch

__all__ = ["MILLitModule"]


class MILLitModule(L.LightningModule):
    """Args:
        model: the MIL model (the student, for teacher–student methods).
        method: the training method (owns any extra modules, e.g. a momentum teacher).
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``optimizer -> LRScheduler`` or None; stepped once per epoch.
        run_info: JSON-able dict saved into checkpoints (resolved config, class names, feature metadata).
        task: the ``milkit.tasks.Task`` (loss, metrics, prediction columns); default classification.
    """

    def __init__(self, model: MILModel, method: TrainingMethod | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, run_info: dict[str, Any] | None = None,
                 task: Task | None = None) -> None:
        super().__init__()
        self.model = model
        self.method = method if method is not None else TrainingMethod()
        self.task = task if task is not None else ClassificationTask()
        self.method.task = self.task
        self.method.setup(model)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=2e-4, weight_decay=1e-5))
        self.scheduler_factory = scheduler
        self.run_info = dict(run_info or {})
        self.val_metrics = self.task.make_metrics("val/", model.num_classes)
        self.test_metrics = self.task.make_metrics("test/", model.num_classes)
        self.test_predictions: list[dict[str, Any]] = []

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Lightning's generic collection walk deep-copies dataclasses (~2 ms a batch); a BagBatch moves itself.
        if isinstance(batch, BagBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ---- training -----------------------------------------------------------------------------------
    def _ctx(self) -> StepContext:
        trainer = self._trainer
        max_steps = int(trainer.estimated_stepping_batches) if trainer is not None else 1
        max_epochs = int(trainer.max_epochs or 1) if trainer is not None else 1
        return StepContext(self.global_step, self.current_epoch, max(1, max_steps), max_epochs)

    def on_train_epoch_start(self) -> None:
        self._train_sums: dict[str, Tensor] = {}
        self._train_bags = 0

    def training_step(self, batch: BagBatch, batch_idx: int) -> Tensor:
        res = self.method.training_step(self.model, batch, self._ctx())
        bs = len(batch)
        # Summed here and logged once per epoch: a self.log call per step costs ~2.5 ms, as much as a small step.
        for name, value in {"loss": res.loss.detach(), **res.logs}.items():
            self._train_sums[name] = self._train_sums.get(name, 0.0) + value.detach().float() * bs
        self._train_bags += bs
        return res.loss

    def on_train_epoch_end(self) -> None:
        if self._train_bags:
            self.log_dict({f"train/{k}": v / self._train_bags for k, v in self._train_sums.items()}, sync_dist=True)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.method.on_optimizer_step(self.model, self._ctx())

    # ---- evaluation ---------------------------------------------------------------------------------
    def _eval_step(self, batch: BagBatch, stage: str) -> dict[str, Any]:
        out = self.method.eval_forward(self.model, batch)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(out.logits, batch.y)
        self.log(f"{stage}/loss", self.task.loss(out.logits, batch.y), on_step=False, on_epoch=True,
                 batch_size=len(batch), sync_dist=True)
        return {"ids": batch.ids, "y": batch.y, "out": out}

    def validation_step(self, batch: BagBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self._test_outputs: list[tuple[list[Any], Tensor, Tensor]] = []
        self.test_predictions = []

    def test_step(self, batch: BagBatch, batch_idx: int) -> None:
        res = self._eval_step(batch, "test")
        self._test_outputs.append((list(res["ids"]), res["out"].logits.detach().float().cpu(), res["y"].cpu()))

    def on_test_epoch_end(self) -> None:
        ids, logits, y = self._all_test_outputs()
        self.test_predictions = self.task.prediction_rows(ids, logits, y) if ids else []
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

    def _all_test_outputs(self) -> tuple[list[Any], Tensor, Tensor]:
        """The test bags' ids, logits and targets, each bag once.

        Under DDP every rank saw a share of the test bags, and the distributed sampler repeats bags to even the
        shares out: gather all shares, keep each bag once (sorted by id), and recompute the metrics from them on
        every rank. The metric states are then synced across ranks, i.e. the same set repeated world_size times,
        which leaves every task's metrics unchanged (AUROC, accuracy, F1; c-index, td-AUC, IBS: tested)."""
        outputs = self._test_outputs
        if self.trainer.world_size > 1:
            shares: list[list[tuple[list[Any], Tensor, Tensor]]] = [[] for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(shares, outputs)
            outputs = [out for share in shares for out in share]
        if not outputs:
            return [], torch.empty(0), torch.empty(0)
        ids = [bag_id for batch_ids, _, _ in outputs for bag_id in batch_ids]
        logits, y = torch.cat([o[1] for o in outputs]), torch.cat([o[2] for o in outputs])
        if self.trainer.world_size > 1:
            first = {bag_id: i for i, bag_id in reversed(list(enumerate(ids)))}
            keep = torch.tensor([first[b] for b in sorted(first, key=str)], dtype=torch.long)
            ids, logits, y = [ids[i] for i in keep.tolist()], logits[keep], y[keep]
            self.test_metrics.reset()
            self.test_metrics.update(logits.to(self.device), y.to(self.device))
        return ids, logits, y

    def predict_step(self, batch: BagBatch, batch_idx: int) -> dict[str, Any]:
        out = self.method.eval_forward(self.model, batch)
        return {"ids": batch.ids, **self.task.predict(out.logits), "instance_scores": out.instance_scores,
                "mask": batch.mask}

    # ---- optimisation and checkpoints ---------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in chain(self.model.parameters(), self.method.parameters()) if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                          "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["milkit"] = self.run_info
