"""Task sequences: what one continual task is, how a sequence config is built, and a synthetic task generator.

A sequence config (``milkit/conf/continual/*.yaml``) lists tasks; each has a ``name``, its ``classes`` (its own head has
one logit per class) and ``data``: a Hydra-instantiable factory returning a ``TaskSplits`` (train / val / test
sequences of ``milkit.data.bag.Bag`` with task-local labels 0..C-1). Validation and test must be disjoint.
``source_task`` turns any ``milkit.data.sources.BagSource`` (e.g. a feature directory + cohort CSV) into a task,
with the training stack's patient-level splits, loading bags lazily.

``synthetic_task`` builds one task of a CPU-sized benchmark with instance labels. All tasks share one feature
space (directions drawn from ``world_seed``): an instance is ``organ_t + tissue_k + noise`` (background; k one of
``n_tissues`` tissue types shared by every task) or ``organ_t + concept_t + noise`` (a witness, instance label 1).
Each task has its own organ direction (so tasks are distinguishable, as organs are) and its own positive concept;
positive bags hold a ``witness`` fraction of concept instances, negative bags none.
"""
from __future__ import annotations

from collections.abc import Sequence as PySequence
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from hydra.utils import instantiate

from milkit.data.bag import Bag
from milkit.data.sources import BagSource
from milkit.data.splits import check_splits, make_cv_splits, predefined_split
from milkit.errors import ConfigError

__all__ = ["TaskSplits", "TaskData", "LazyBags", "ShiftedBags", "build_tasks", "source_task", "synthetic_task"]


@dataclass
class TaskSplits:
    train: Sequence[Bag]
    val: Sequence[Bag]
    test: Sequence[Bag]


class LazyBags(PySequence):
    """Bags of a ``BagSource`` loaded on access (``ids`` are known without loading)."""

    def __init__(self, source: BagSource, ids: Sequence[str]) -> None:
        self.source, self.ids = source, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Bag:
        return self.source.load(self.ids[i])


class ShiftedBags(PySequence):
    """A view of ``bags`` with labels shifted by ``offset`` (checked against ``num_classes`` on access)."""

    def __init__(self, bags: Sequence[Bag], offset: int, num_classes: int, where: str) -> None:
        self.bags, self.offset, self.num_classes, self.where = bags, offset, num_classes, where

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> Bag:
        bag = self.bags[i]
        if bag.label is None or not 0 <= bag.label < self.num_classes:
            raise ConfigError(f"{self.where}: bag '{bag.bag_id}' has label {bag.label}, "
                              f"expected 0..{self.num_classes - 1}")
        return replace(bag, label=bag.label + self.offset)


def _ids(bags: Sequence[Bag]) -> set[str]:
    return set(bags.ids) if isinstance(bags, LazyBags) else {b.bag_id for b in bags}


def source_task(source: BagSource, fold: int = 0, folds: int = 5, seed: int = 0,
                use_cohort_split: bool = True) -> TaskSplits:
    """One task from a bag source: the cohort's own ``split`` column when it has one (and ``use_cohort_split``),
    else fold ``fold`` of the stratified patient-level ``folds``-fold split (validation = the next case group)."""
    records = source.records
    if use_cohort_split and "split" in records:
        table = predefined_split(records)
    else:
        table = make_cv_splits(records, folds, seed)
    table = check_splits(table, f"{getattr(source, 'name', 'source')} splits")
    rows = table[table["fold"] == fold]
    if rows.empty:
        raise ConfigError(f"source_task: fold {fold} does not exist (folds: {sorted(set(table['fold']))})")
    return TaskSplits(*(LazyBags(source, rows.loc[rows["split"] == s, "bag_id"].tolist())
                        for s in ("train", "val", "test")))


@dataclass
class TaskData:
    """One task of a sequence, with labels already shifted to global class indices ``offset + local``."""

    name: str
    classes: list[str]
    offset: int
    splits: TaskSplits

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_tasks(tasks_cfg: Sequence[Any]) -> list[TaskData]:
    """Instantiate every task's data, check it, and shift its labels into the class-incremental label space."""
    if not tasks_cfg:
        raise ConfigError("continual.tasks: the task sequence is empty")
    out, offset = [], 0
    for i, cfg in enumerate(tasks_cfg):
        name = str(cfg.get("name", f"task{i}"))
        classes = [str(c) for c in cfg.get("classes", [])]
        if len(classes) < 2:
            raise ConfigError(f"continual.tasks[{i}] ({name}): 'classes' must list at least two classes")
        splits = instantiate(cfg["data"])
        if not isinstance(splits, TaskSplits):
            raise ConfigError(f"continual.tasks[{i}].data must build a TaskSplits, got {type(splits).__name__}")
        for split in ("train", "val", "test"):
            if not getattr(splits, split):
                raise ConfigError(f"continual.tasks[{i}] ({name}): the {split} split is empty")
        if _ids(splits.val) & _ids(splits.test):
            raise ConfigError(f"continual.tasks[{i}] ({name}): validation and test share bags")
        where = f"continual.tasks[{i}] ({name})"
        shifted = TaskSplits(*(ShiftedBags(getattr(splits, s), offset, len(classes), f"{where}.{s}")
                               for s in ("train", "val", "test")))
        out.append(TaskData(name, classes, offset, shifted))
        offset += len(classes)
    return out


def _direction(world_seed: int, index: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1_000_003 * world_seed + index)
    v = torch.randn(dim, generator=g)
    return v / v.norm()


def _bags(n: int, task: int, split: str, gen: torch.Generator, organ: torch.Tensor, tissues: torch.Tensor,
          concept: torch.Tensor, bag_size: Sequence[int], witness: Sequence[float], noise: float) -> list[Bag]:
    bags = []
    for i in range(n):
        label = i % 2
        size = int(torch.randint(bag_size[0], bag_size[1] + 1, (1,), generator=gen))
        frac = witness[0] + (witness[1] - witness[0]) * float(torch.rand((), generator=gen))
        n_pos = max(1, round(frac * size)) if label else 0
        inst_y = torch.zeros(size, dtype=torch.long)
        inst_y[:n_pos] = 1
        inst_y = inst_y[torch.randperm(size, generator=gen)]
        kinds = tissues[torch.randint(len(tissues), (size,), generator=gen)]
        signal = torch.where(inst_y.bool().unsqueeze(1), concept.expand(size, -1), kinds)
        x = organ + signal + noise * torch.randn(size, organ.shape[0], generator=gen)
        bags.append(Bag(features=x, label=label, bag_id=f"t{task}_{split}_{i:04d}", instance_labels=inst_y))
    return bags


def synthetic_task(task: int, in_dim: int = 32, n_train: int = 96, n_val: int = 48, n_test: int = 80,
                   bag_size: Sequence[int] = (8, 32), witness: Sequence[float] = (0.15, 0.3), n_tissues: int = 4,
                   organ_scale: float = 2.0, tissue_scale: float = 2.0, concept_scale: float = 3.5,
                   noise: float = 1.0, world_seed: int = 0, seed: int = 0) -> TaskSplits:
    """Train / val / test bags of synthetic task ``task`` (labels 0 = negative, 1 = positive; see module doc)."""
    if bag_size[0] < 1 or bag_size[1] < bag_size[0]:
        raise ConfigError(f"synthetic_task: bag_size must be (min >= 1, max >= min), got {list(bag_size)}")
    tissues = torch.stack([_direction(world_seed, k, in_dim) for k in range(n_tissues)]) * tissue_scale
    organ = _direction(world_seed, n_tissues + 2 * task, in_dim) * organ_scale
    concept = _direction(world_seed, n_tissues + 2 * task + 1, in_dim) * concept_scale
    splits = {}
    for j, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        gen = torch.Generator().manual_seed(7919 * seed + 104_729 * task + j)
        splits[split] = _bags(n, task, split, gen, organ, tissues, concept, bag_size, witness, noise)
    return TaskSplits(**splits)
