"""Slide inference: checkpoint → (reused or recomputed) patch features → prediction → heatmaps.

``infer(cfg)`` is the entry point of ``scripts/infer_slide.py`` / ``milkit-infer``; ``SlidePredictor`` and
``run_slide`` are the Python API for one slide; ``render_heatmap`` draws scores over any slide. Names are
imported on first use, so rendering alone (``milkit.inference.heatmap``) does not load the training stack.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "infer": "milkit.inference.run", "run_batch": "milkit.inference.run", "InferOptions": "milkit.inference.options",
    "SlidePredictor": "milkit.inference.predictor", "run_slide": "milkit.inference.slide",
    "rank_normalise": "milkit.inference.heatmap", "render_heatmap": "milkit.inference.heatmap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'milkit.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
