"""Package a model trained outside ``train(cfg)`` as a milkit checkpoint that ``infer`` can use.

The file has the two entries ``load_checkpoint`` reads: ``state_dict`` (keys prefixed ``model.``, as the
LightningModule saves them) and ``milkit`` (the model config, class names, the attributes of the feature
files the model was trained on, and optional standardisation statistics). Used by the benchmark and tests,
and by anyone who trains a registered model with their own loop.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

import milkit
from milkit.utils.io import atomic_path

__all__ = ["save_model_checkpoint"]


def save_model_checkpoint(path: str | os.PathLike, model: nn.Module, model_cfg: Mapping[str, Any],
                          class_names: Sequence[str], feature_meta: Mapping[str, Any],
                          feature_stats: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Write ``model`` with ``model_cfg`` (``{"_target_": "milkit.models.create_model", "model_name": ...}``,
    which must rebuild the same architecture) and ``feature_meta`` (e.g. ``FeatureDirSource.feature_meta()``)."""
    info = {"cfg": {"model": dict(model_cfg)}, "class_names": list(class_names), "feature_meta": dict(feature_meta),
            "feature_stats": None if feature_stats is None else {k: list(v) for k, v in feature_stats.items()},
            "milkit_version": milkit.__version__}
    state = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "milkit": info}, tmp)
    return Path(path)
