"""Model registry: ``create_model(name, **kw)`` and ``list_models()`` are the public API.

Every module in this package registers its variants at import time; adding a model is one new file
(plus a ``milkit/conf/model/*.yaml``), and the registry-parametrized tests pick it up automatically.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from milkit.models.base import MILModel
from milkit.registry import Registry

__all__ = ["MODELS", "MILModel", "create_model", "list_models", "model_info", "register_model"]

MODELS: Registry[MILModel] = Registry("model")

_META_DEFAULTS: dict[str, Any] = {
    "permutation_invariant": True,   # output unchanged when instances are shuffled
    "mil_assumption": "none",        # standard | threshold | none
    "needs_coords": False,
    "instance_scores": True,         # returns MILOutput.instance_scores (MHIM, heatmaps need them)
    "tiny_kwargs": {},               # small variant for fast tests
    "aut": True,                     # include in the algorithmic-unit-test suite by default
}


def register_model(name: str, **meta: Any) -> Callable[[Callable[..., MILModel]], Callable[..., MILModel]]:
    """Register a model factory ``fn(in_dim, num_classes, **kw) -> MILModel`` with metadata."""
    unknown = set(meta) - set(_META_DEFAULTS) - {"description", "paper"}
    if unknown:
        raise TypeError(f"unknown model metadata {sorted(unknown)} for '{name}'")
    return MODELS.register(name, **{**_META_DEFAULTS, **meta})


def create_model(model_name: str, in_dim: int, num_classes: int, **kwargs: Any) -> MILModel:
    """Build a registered model. ``None`` kwargs are dropped (they mean "use the default")."""
    return MODELS.create(model_name, in_dim=in_dim, num_classes=num_classes, **kwargs)


def list_models(pattern: str = "*", **meta_filter: Any) -> list[str]:
    """Registered model names matching a glob ``pattern`` and metadata equalities."""
    return MODELS.names(pattern, **meta_filter)


def model_info(name: str) -> dict[str, Any]:
    """The registry metadata of a model (``permutation_invariant``, ``mil_assumption``, ``tiny_kwargs``...)."""
    return MODELS.meta(name)


def _import_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in {"base", "layers"} and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_import_all()
