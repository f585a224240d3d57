"""Classification metrics for bag predictions (binary and multi-class, macro one-vs-rest)."""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (BinaryAccuracy, BinaryAUROC, BinaryF1Score, BinaryStatScores,
                                         MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score)

__all__ = ["probabilities", "make_metrics", "BalancedBinaryAccuracy", "METRIC_NAMES"]

METRIC_NAMES = ("auroc", "acc", "bacc", "f1")


def probabilities(logits: Tensor) -> Tensor:
    """Class probabilities ``(B, C)``; a single logit gives ``[1 - p, p]``."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits.float())
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(logits.float(), dim=-1)


class BalancedBinaryAccuracy(BinaryStatScores):
    """(sensitivity + specificity) / 2 at threshold 0.5."""

    def compute(self) -> Tensor:  # type: ignore[override]
        tp, fp, tn, fn, _ = super().compute().float().unbind(-1)
        sens = tp / (tp + fn) if tp + fn > 0 else torch.zeros(())
        spec = tn / (tn + fp) if tn + fp > 0 else torch.zeros(())
        return (sens + spec) / 2


def make_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """AUROC, accuracy, balanced accuracy and F1, updated with ``(probs (B, C), y (B,))``.

    For two classes the binary metrics use the positive-class probability at threshold 0.5 (equivalent to
    argmax); for more classes AUROC is macro one-vs-rest, balanced accuracy is macro recall and F1 is macro.
    """
    c = max(num_classes, 2)
    if c == 2:
        metrics = {"auroc": BinaryAUROC(), "acc": BinaryAccuracy(), "bacc": BalancedBinaryAccuracy(),
                   "f1": BinaryF1Score()}
    else:
        metrics = {"auroc": MulticlassAUROC(c, average="macro"), "acc": MulticlassAccuracy(c, average="micro"),
                   "bacc": MulticlassAccuracy(c, average="macro"), "f1": MulticlassF1Score(c, average="macro")}
    return _ProbMetrics(metrics, prefix=prefix, binary=c == 2)


class _ProbMetrics(MetricCollection):
    def __init__(self, metrics: dict, prefix: str, binary: bool) -> None:
        super().__init__(metrics, prefix=prefix, compute_groups=False)
        self.binary = binary

    def update(self, probs: Tensor, y: Tensor) -> None:  # type: ignore[override]
        super().update(probs[:, 1] if self.binary else probs, y)
