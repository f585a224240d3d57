"""The task axis: what a bag's label is and how predictions are scored (``task=classification|survival``).

A ``Task`` owns everything label-specific so that models and training methods stay task-agnostic:

* ``prepare(source)``: read and validate the labels of a bag source; may regroup its bags (survival: one bag per
  patient) and sets ``records["label"]``, the key that stratifies the patient-level splits;
* ``fit(train_records)``: fold-dependent state learned from the training fold only (survival: the time bins);
  ``state()`` / ``load_state()`` carry it into checkpoints;
* ``out_dim(configured)``: the model's output width (``num_classes`` of every model);
* ``loss(logits, y)``, ``make_metrics(prefix, out_dim)`` (``update(logits, y)`` / ``compute()`` / ``reset()``),
  ``metric_names``, ``prediction_rows`` (per-bag CSV columns), ``predict`` (what inference reports) and
  ``instance_score`` (MHIM's class-aware score);
* ``fold_report`` / ``finish``: extra per-fold numbers and per-run artefacts (survival: bootstrap CI, oracle
  c-index, Kaplan–Meier plot).

``y`` in a ``Bag`` / ``BagBatch`` is the task's target: a class index ``(B,)`` long for classification, a
``(B, 2)`` float (time, event) for survival. Adding a task = one subclass registered with ``@register_task``
plus ``conf/task/<name>.yaml``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd
from torch import Tensor, nn

from milkit.errors import ConfigError

__all__ = ["Task", "register_task", "list_tasks", "get_task_class", "build_task"]

_TASKS: dict[str, type["Task"]] = {}


def register_task(name: str) -> Callable[[type["Task"]], type["Task"]]:
    """Class decorator: make a task available as ``task=<name>``."""
    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        _TASKS[name] = cls
        return cls
    return wrap


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task_class(name: str) -> type["Task"]:
    if name not in _TASKS:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(list_tasks())})")
    return _TASKS[name]


class Task:
    """Base class; see the module docstring for the contract."""

    name: str = "task"
    #: targets are class indices (label-dependent auxiliary losses such as CLAM's clustering need them)
    categorical: bool = True
    metric_names: tuple[str, ...] = ()

    def prepare(self, source: Any) -> Any:
        return source

    def strata(self, records: pd.DataFrame, folds: int) -> pd.DataFrame:  # noqa: ARG002
        """``records`` with the ``label`` column that stratifies ``folds``-fold splits."""
        return records

    def fit(self, train_records: pd.DataFrame) -> None:  # noqa: ARG002
        """Learn fold-dependent state from the training bags' records only."""

    def sample_groups(self, train_records: pd.DataFrame) -> pd.Series:
        """Group key per training bag (indexed by ``bag_id``) for ``data.balanced_sampler``: the ``label``."""
        return train_records.set_index("bag_id")["label"]

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: ARG002
        """Restore what ``state()`` returned (from a checkpoint)."""

    def out_dim(self, configured: int) -> int:
        return configured

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def make_metrics(self, prefix: str, out_dim: int) -> nn.Module:
        raise NotImplementedError

    def prediction_rows(self, ids: list[str], logits: Tensor, y: Tensor | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def predict(self, logits: Tensor) -> dict[str, Tensor]:
        """What inference reports for a batch of logits ``(B, C)``: named ``(B, ...)`` tensors."""
        raise NotImplementedError

    def instance_score(self, logits: Tensor) -> Tensor:
        """Score of instances classified alone, ``(..., C) -> (...)``; MHIM masks the highest."""
        raise NotImplementedError

    def fold_report(self, module: Any, dm: Any, fold_dir: Path, seed: int) -> dict[str, float]:  # noqa: ARG002
        """Extra numbers for the fold's row, after testing the selected checkpoint."""
        return {}

    def finish(self, out_dir: Path) -> dict[str, Any]:  # noqa: ARG002
        """Run-level artefacts after all folds (e.g. a pooled Kaplan–Meier plot)."""
        return {}


def build_task(cfg: Any) -> Task:
    """The run's task from ``cfg.task`` (classification when absent, e.g. configs older than the task axis);
    checks a data config's ``requires_task`` (survival cohorts cannot be classified)."""
    from hydra.utils import instantiate

    task = instantiate(cfg.task) if cfg.get("task") else _TASKS["classification"]()
    data = cfg.get("data") or {}
    needed = data.get("requires_task") if hasattr(data, "get") else None
    if needed and needed != task.name:
        raise ConfigError(f"this data config needs task={needed} (got task={task.name}); add task={needed}")
    return task
