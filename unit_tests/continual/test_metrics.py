"""Continual metrics on constructed predictions and matrices."""
from __future__ import annotations

import math

import numpy as np
import pytest

from milkit.continual.metrics import ContinualMatrix, TaskPredictions, dice_iou, task_metrics, youden_threshold


def test_summary_final_bwt_and_forgetting() -> None:
    m = ContinualMatrix(["a", "b", "c"])
    rows = [[0.9], [0.6, 0.8], [0.5, 0.7, 1.0]]
    for t, row in enumerate(rows):
        for s, v in enumerate(row):
            m.record(t, s, {"acc": v})
    summary = m.summary()["acc"]
    assert summary["final"] == pytest.approx((0.5 + 0.7 + 1.0) / 3)
    assert summary["bwt"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert summary["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert math.isnan(m.values["acc"][0, 1])
    with pytest.raises(ValueError):
        m.record(0, 1, {"acc": 1.0})


def test_task_metrics_class_incremental_and_task_aware() -> None:
    # two seen tasks (4 classes); evaluating task 1 (offset 2): labels 2, 3
    logits = np.array([[5.0, 0.0, 1.0, 0.0],   # class-incremental: predicts 0 (wrong); task-aware: 2 (right)
                       [0.0, 0.0, 0.0, 2.0],   # right in both
                       [0.0, 0.0, 3.0, 1.0]])  # label 3: wrong in both
    y = np.array([2, 3, 3])
    probs = [np.array([0.1, 0.9, 0.2]), np.array([1.0, 0.0]), np.array([0.0, 0.4, 0.8])]
    inst_y = [np.array([0, 1, 0]), np.array([0, 0]), np.array([0, 1, -1])]
    out = task_metrics(TaskPredictions(logits, y, probs, inst_y), offset=2, num_classes=2, threshold=0.5)
    assert out["acc"] == pytest.approx(1 / 3) and out["acc_task"] == pytest.approx(2 / 3)
    # instance AUC over the labelled instances of bags 0 and 2 (bag 1 has no positive instance)
    assert out["inst_auc"] == pytest.approx(1.0)  # positives 0.9, 0.4 above negatives 0.1, 0.2, 0.0
    # Dice at 0.5: bag 0 pred {1} vs {1} -> 1; bag 2 pred {2} (label unknown, dropped) -> pred {} vs {1} -> 0
    assert out["dice"] == pytest.approx(0.5) and out["iou"] == pytest.approx(0.5)


def test_dice_iou_and_youden() -> None:
    assert dice_iou(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool)) == pytest.approx((2 / 3, 1 / 2))
    assert youden_threshold(np.array([0.1, 0.2, 0.7, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.7)
    assert youden_threshold(np.array([0.3, 0.4]), np.array([1, 1])) == 0.5
