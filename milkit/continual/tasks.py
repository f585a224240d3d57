"""Task sequences: what one continual task is, how a sequence config is built, and a synthetic task generator.

A sequence config (``conf/continual/*.yaml``) lists tasks; each has a ``name``, its ``classes`` (its own head has
one logit per class) and ``data``: a Hydra-instantiable factory returning a ``TaskSplits`` (train / val / test lists
of ``milkit.data.bag.Bag`` with task-local labels 0..C-1). Validation and test must be disjoint.

``synthetic_task`` builds one task of a CPU-sized benchmark with instance labels. All tasks share one feature
space (directions drawn from ``world_seed``): an instance is ``organ_t + tissue_k + noise`` (background; k one of
``n_tissues`` tissue types shared by every task) or ``organ_t + concept_t + noise`` (a witness, instance label 1).
Each task has its own organ direction (so tasks are distinguishable, as organs are) and its own positive concept;
positive bags hold a ``witness`` fraction of concept instances, negative bags none.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from hydra.utils import instantiate

from milkit.data.bag import Bag
from milkit.errors import ConfigError

__all__ = ["TaskSplits", "TaskData", "build_tasks", "synthetic_task"]


@dataclass
class TaskSplits:
    train: list[Bag]
    val: list[Bag]
    test: list[Bag]


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


def _shift(bags: Sequence[Bag], offset: int, where: str, num_classes: int) -> list[Bag]:
    out = []
    for bag in bags:
        if bag.label is None or not 0 <= bag.label < num_classes:
            raise ConfigError(f"{where}: bag '{bag.bag_id}' has label {bag.label}, expected 0..{num_classes - 1}")
        out.append(replace(bag, label=bag.label + offset))
    return out


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
        if {b.bag_id for b in splits.val} & {b.bag_id for b in splits.test}:
            raise ConfigError(f"continual.tasks[{i}] ({name}): validation and test share bags")
        where = f"continual.tasks[{i}] ({name})"
        shifted = TaskSplits(*(_shift(getattr(splits, s), offset, f"{where}.{s}", len(classes))
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
