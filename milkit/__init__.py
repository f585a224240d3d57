"""milkit: Multiple Instance Learning for computational pathology."""
from __future__ import annotations

__version__ = "0.1.0"

from milkit.types import BagBatch, BagFeatures, MILOutput  # noqa: E402

__all__ = ["BagBatch", "BagFeatures", "MILOutput", "__version__"]
