"""Slide inference: checkpoint → (reused or recomputed) patch features → prediction → heatmaps.

``infer(cfg)`` is the entry point of ``scripts/infer_slide.py`` / ``milkit-infer``; ``SlidePredictor`` and
``run_slide`` are the Python API for one slide; ``render_heatmap`` draws scores over any slide.
"""
from __future__ import annotations

from milkit.inference.heatmap import rank_normalise, render_heatmap
from milkit.inference.options import InferOptions
from milkit.inference.predictor import SlidePredictor
from milkit.inference.run import infer, run_batch
from milkit.inference.slide import run_slide

__all__ = ["InferOptions", "SlidePredictor", "infer", "rank_normalise", "render_heatmap", "run_batch", "run_slide"]
