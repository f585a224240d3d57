"""Batch preprocessing of whole-slide images: segment → tile → extract, resumable and shardable."""
from __future__ import annotations

from milkit.preprocess.runner import Settings, preprocess, run_tag

__all__ = ["Settings", "preprocess", "run_tag"]
