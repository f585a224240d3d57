"""Plain supervised training: task loss plus the model's own auxiliary losses."""
from __future__ import annotations

from milkit.training.methods.base import TrainingMethod

__all__ = ["Supervised"]


class Supervised(TrainingMethod):
    """The default method (``method=supervised``); all behaviour lives in ``TrainingMethod``."""
