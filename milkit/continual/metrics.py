"""Continual-learning metrics: per-task bag and instance metrics, the task × task matrix, averages and forgetting.

For task s evaluated after training task t (matrix entry ``[t, s]``, NaN for s > t):

* ``acc``: class-incremental bag accuracy, argmax over the logits of every seen class (no task identity);
* ``acc_task``: task-aware accuracy, argmax over task s's own head;
* ``auc``: task-aware bag AUROC from the softmax over task s's head (macro one-vs-rest when it has > 2 classes);
  both task-aware metrics come from ``milkit.training.metrics``; upstream's one-vs-one AUC over all seen classes
  is NaN as soon as a class is absent, so it is not used;
* ``inst_auc``: instance AUC of the instance probabilities over the labelled instances of the task's *positive*
  bags (bags with at least one positive instance). The probabilities are per-bag min–max-normalised attention, so
  every bag, negative ones included, has an instance at 1: they rank instances within a bag, not across bags, and
  an AUC pooled over negative bags would mostly measure that normalisation;
* ``dice`` / ``iou``: mean over the same positive bags of the Dice / IoU of ``instance probability ≥ θ_s``; θ_s is
  the Youden-optimal threshold on the instances of task s's *validation* positive bags, chosen right after task s
  is learned and frozen afterwards (upstream picks it on the test set and also averages IoU 0 over negative bags
  of later tasks; neither is copied).

Summaries over the final row (T tasks): ``final`` = mean_s M[T-1, s]; ``bwt`` (backward transfer) =
mean_{s<T-1} (M[T-1, s] − M[s, s]), negative = forgetting; ``forgetting`` = mean_{s<T-1} (max_{t<T-1} M[t, s] −
M[T-1, s]) (Chaudhry et al., 2018).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from milkit.training.metrics import make_metrics, probabilities

__all__ = ["TaskPredictions", "youden_threshold", "task_metrics", "ContinualMatrix", "METRICS"]

METRICS = ("acc", "acc_task", "auc", "inst_auc", "dice", "iou")


@dataclass
class TaskPredictions:
    """Model outputs on one task's bags. ``logits (n, C_seen)``, ``y (n,)`` global labels; per bag, instance
    probabilities and instance labels (-1 = unknown) of its real instances."""

    logits: np.ndarray
    y: np.ndarray
    instance_prob: list[np.ndarray] = field(default_factory=list)
    instance_y: list[np.ndarray] = field(default_factory=list)

    def positive_bags(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(probabilities, labels) of the labelled instances of each bag that has a positive instance."""
        return [(p[y >= 0], y[y >= 0].astype(int)) for p, y in zip(self.instance_prob, self.instance_y)
                if np.any(y == 1)]

    def positive_bag_instances(self) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated (probabilities, labels) over ``positive_bags``."""
        bags = self.positive_bags()
        if not bags:
            return np.zeros(0), np.zeros(0, dtype=int)
        return np.concatenate([p for p, _ in bags]), np.concatenate([y for _, y in bags])


def _task_aware(task_logits: np.ndarray, local_y: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(AUROC, accuracy) of one task's own head, with the training stack's metric definitions."""
    metrics = make_metrics(num_classes, prefix="")
    metrics.update(probabilities(torch.as_tensor(task_logits)), torch.as_tensor(local_y, dtype=torch.long))
    values = metrics.compute()
    auroc = float(values["auroc"]) if len(np.unique(local_y)) == max(num_classes, 2) else math.nan
    return auroc, float(values["acc"])


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising TPR − FPR; 0.5 when only one class is present."""
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(labels, scores)
    return float(min(thr[int(np.argmax(tpr - fpr))], 1.0))


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks (1, 1 when both are empty)."""
    inter, total = float(np.sum(pred & target)), float(np.sum(pred) + np.sum(target))
    union = total - inter
    return (1.0, 1.0) if total == 0 else (2 * inter / total, inter / union)


def task_metrics(pred: TaskPredictions, offset: int, num_classes: int, threshold: float | None) -> dict[str, float]:
    """All metrics of one task (see the module docstring); localisation ones are NaN without instance labels."""
    auc, acc_task = _task_aware(pred.logits[:, offset:offset + num_classes], pred.y - offset, num_classes)
    out = {"acc": float(np.mean(pred.logits.argmax(-1) == pred.y)), "acc_task": acc_task, "auc": auc,
           "inst_auc": math.nan, "dice": math.nan, "iou": math.nan}
    p, y = pred.positive_bag_instances()
    if len(np.unique(y)) == 2:
        out["inst_auc"] = float(roc_auc_score(y, p))
    if threshold is not None:
        scores = [dice_iou(pb >= threshold, yb == 1) for pb, yb in pred.positive_bags()]
        if scores:
            out["dice"], out["iou"] = (float(np.mean(v)) for v in zip(*scores))
    return out


class ContinualMatrix:
    """Task × task matrices of every metric; row t = after training task t, column s = evaluated task."""

    def __init__(self, task_names: list[str]) -> None:
        self.task_names = list(task_names)
        n = len(task_names)
        self.values = {m: np.full((n, n), math.nan) for m in METRICS}

    def record(self, trained: int, evaluated: int, metrics: dict[str, float]) -> None:
        if evaluated > trained:
            raise ValueError(f"task {evaluated} cannot be evaluated before it is trained (after task {trained})")
        for name, value in metrics.items():
            self.values[name][trained, evaluated] = value

    def summary(self, upto: int | None = None) -> dict[str, dict[str, float]]:
        """``{metric: {final, bwt, forgetting}}`` after task ``upto`` (default: the last one)."""
        last = len(self.task_names) - 1 if upto is None else upto
        out: dict[str, dict[str, float]] = {}
        for name, m in self.values.items():
            final = m[last, : last + 1]
            old = range(last)
            bwt = [m[last, s] - m[s, s] for s in old]
            forg = [np.nanmax(m[s:last, s]) - m[last, s] if np.isfinite(m[s:last, s]).any() else math.nan
                    for s in old]
            out[name] = {"final": _nanmean(final), "bwt": _nanmean(bwt), "forgetting": _nanmean(forg)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.task_names,
                "matrices": {k: [[None if math.isnan(x) else float(x) for x in row] for row in v]
                             for k, v in self.values.items()},
                "summary": self.summary()}


def _nanmean(values) -> float:
    arr = np.asarray(list(values), dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
