"""Rebuild a trained model from a checkpoint alone (its resolved config is stored inside)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from milkit.data.bag import Bag
from milkit.data.datamodule import FeatureStats
from milkit.errors import DataError
from milkit.models.base import MILModel
from milkit.tasks import Task, build_task
from milkit.training.metrics import probabilities
from milkit.types import MILOutput

__all__ = ["INCOMPLETE", "LoadedModel", "load_checkpoint", "stats_to_info", "strip_prefix"]

INCOMPLETE = "incomplete"  # sub-folder of a fold's checkpoints/ while the fold trains (see milkit.training.train)


def stats_to_info(stats: FeatureStats | None) -> dict[str, list[float]] | None:
    return None if stats is None else {"mean": stats.mean.tolist(), "std": stats.std.tolist()}


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The entries of a Lightning ``state_dict`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what is needed to feed it like during training."""

    model: MILModel
    cfg: dict[str, Any]
    class_names: list[str]
    feature_meta: dict[str, Any] = field(default_factory=dict)
    stats: FeatureStats | None = None
    path: Path | None = None
    task: Task | None = None   # with its fitted state (survival: the training fold's bins)
    fold: str | None = None    # the fold it was trained on ("fold3", "r1_fold3")

    @torch.no_grad()
    def forward_bag(self, bag: Bag) -> MILOutput:
        """Run the model on one bag (standardised with the training statistics when training used them)."""
        if self.stats is not None:
            bag = self.stats(bag)
        x = bag.features.unsqueeze(0).float()
        coords = None if bag.coords is None else bag.coords.unsqueeze(0).float()
        return self.model.eval()(x, None, coords)

    def predict_bag(self, bag: Bag) -> torch.Tensor:
        """Class probabilities ``(C,)`` for one bag."""
        return probabilities(self.forward_bag(bag).logits)[0]

    def predict(self, bag: Bag) -> dict[str, torch.Tensor]:
        """What the task reports for one bag (classification: ``probs (C,)``; survival: ``risk ()``,
        ``survival (K,)``), plus the model output under ``"output"``."""
        out = self.forward_bag(bag)
        return {**{k: v[0] for k, v in self.task.predict(out.logits).items()}, "output": out}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a milkit checkpoint written by ``train(cfg)``; raises a one-line error for foreign files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: checkpoint not found")
    if path.parent.name == INCOMPLETE:
        raise DataError(f"{path}: checkpoint of a fold whose training did not finish (interrupted); "
                        f"use a finished fold's checkpoints/best.ckpt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise DataError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    info = ckpt.get("milkit") if isinstance(ckpt, dict) else None
    if not info or "cfg" not in info:
        raise DataError(f"{path}: not a milkit checkpoint (no 'milkit' run information inside)")
    cfg = OmegaConf.create(info["cfg"])
    model: MILModel = instantiate(cfg.model)
    model.load_state_dict(strip_prefix(ckpt["state_dict"]))
    stats = info.get("feature_stats")
    stats = None if stats is None else FeatureStats(torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
    task = build_task(cfg)
    task.load_state(info.get("task") or {})
    return LoadedModel(model.eval(), info["cfg"], list(info.get("class_names", [])), info.get("feature_meta", {}),
                       stats, path, task, info.get("fold"))
