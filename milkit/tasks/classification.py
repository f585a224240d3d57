"""``task=classification``: one class index per bag, cross-entropy, AUROC / accuracy / balanced accuracy / F1."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from milkit.errors import DataError
from milkit.tasks.base import Task, register_task
from milkit.training.methods.base import task_loss
from milkit.training.metrics import METRIC_NAMES, make_metrics, probabilities

__all__ = ["ClassificationTask"]


class _LogitMetrics(nn.Module):
    """The classification ``MetricCollection`` fed with logits instead of probabilities."""

    def __init__(self, num_classes: int, prefix: str) -> None:
        super().__init__()
        self.metrics = make_metrics(num_classes, prefix)

    def update(self, logits: Tensor, y: Tensor) -> None:
        self.metrics.update(probabilities(logits), y)

    def compute(self) -> dict[str, Tensor]:
        return self.metrics.compute()

    def reset(self) -> None:
        self.metrics.reset()


@register_task("classification")
class ClassificationTask(Task):
    """Bag classification (the default). ``num_classes`` is the model's configured width (1 = one logit + BCE)."""

    categorical = True
    metric_names = METRIC_NAMES

    def prepare(self, source: Any) -> Any:
        if source.num_classes == 0:
            raise DataError(f"{getattr(source, 'cohort_csv', source.name)}: no 'label' column "
                            "(classification needs one; survival cohorts train with task=survival)")
        return source

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return task_loss(logits, y)

    def make_metrics(self, prefix: str, out_dim: int) -> nn.Module:
        return _LogitMetrics(out_dim, prefix)

    def prediction_rows(self, ids: list[str], logits: Tensor, y: Tensor | None) -> list[dict[str, Any]]:
        probs = probabilities(logits)
        return [{"bag_id": bag_id, **({} if y is None else {"label": int(y[i])}), "pred": int(probs[i].argmax()),
                 **{f"prob_{c}": float(p) for c, p in enumerate(probs[i])}} for i, bag_id in enumerate(ids)]

    def predict(self, logits: Tensor) -> dict[str, Tensor]:
        return {"probs": probabilities(logits)}

    def instance_score(self, logits: Tensor) -> Tensor:
        from milkit.training.methods.mhim import class_probability  # lazy: mhim imports the methods package

        return class_probability(logits)
