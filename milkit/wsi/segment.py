"""Tissue segmentation on a thumbnail at a fixed coarse resolution.

``hsv`` follows CLAM's classical recipe (HSV saturation → median blur → Otsu or fixed threshold →
morphological closing → area filters), with two deliberate changes: object/hole sizes are physical (µm²,
not multiples of a 512-px level-0 reference patch), and the thumbnail is read at a fixed MPP instead of
"the level closest to a 64× downsample", so the same parameters behave the same on 20× and 40× scans.
Otsu's threshold is floored at ``min_threshold`` so that an empty (all-background) slide gives no tissue
instead of thresholding JPEG noise. ``all`` marks the whole slide as tissue (TMA cores, pre-cropped images).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from milkit.errors import ConfigError
from milkit.registry import Registry

__all__ = ["SEGMENTERS", "Segmenter", "HSVSegmenter", "WholeSlideSegmenter", "create_segmenter",
           "remove_small_regions"]


class Segmenter(Protocol):
    seg_mpp: float

    def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Boolean tissue mask ``(h, w)`` for an RGB thumbnail ``(h, w, 3)`` at ``mpp`` µm/px."""

    def params(self) -> dict[str, Any]:
        """JSON-able parameters, recorded in the coordinate files' ``segmenter`` attribute."""


SEGMENTERS: Registry[Segmenter] = Registry("segmenter")


def remove_small_regions(mask: np.ndarray, min_area_px: float, connectivity: int = 8) -> np.ndarray:
    """Drop connected components of ``mask`` with fewer than ``min_area_px`` pixels."""
    if min_area_px <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
    if keep[1:].all():
        return mask
    keep[0] = False  # label 0 is the complement of mask
    return keep[labels]


@dataclass
class HSVSegmenter:
    """Saturation-based tissue detector (CLAM-style) with sizes in µm².

    Args:
        seg_mpp: resolution of the thumbnail (µm/px); 16 ≈ 0.625×, the resolution CLAM segments a 40× scan
            at (its level closest to a 64× downsample), so CLAM's kernel sizes keep their physical meaning.
        threshold: ``"otsu"`` or a fixed saturation value in 0..255 (CLAM's ``sthresh``, default 8).
        min_threshold: floor applied to Otsu's value.
        median_px: median-blur kernel (odd, pixels at ``seg_mpp``).
        close_px: closing kernel size (pixels at ``seg_mpp``); 0 disables.
        min_object_um2: tissue pieces smaller than this are dropped.
        min_hole_um2: holes smaller than this are filled (kept as tissue).
    """

    seg_mpp: float = 16.0
    threshold: str | int = "otsu"
    min_threshold: int = 8
    median_px: int = 7
    close_px: int = 5
    min_object_um2: float = 50_000.0
    min_hole_um2: float = 100_000.0

    def __post_init__(self) -> None:
        if self.median_px and self.median_px % 2 == 0:
            raise ConfigError(f"segmenter.median_px must be odd, got {self.median_px}")
        if not (self.threshold == "otsu" or isinstance(self.threshold, int)):
            raise ConfigError(f"segmenter.threshold must be 'otsu' or an integer, got {self.threshold!r}")

    def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
        if self.median_px > 1:
            sat = cv2.medianBlur(sat, self.median_px)
        if self.threshold == "otsu":
            otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            thr = max(float(otsu), float(self.min_threshold))
        else:
            thr = float(self.threshold)
        mask = (sat > thr).astype(np.uint8)
        if self.close_px > 1:
            kernel = np.ones((self.close_px, self.close_px), np.uint8)
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        px_area = mpp * mpp
        mask = remove_small_regions(mask.astype(bool), self.min_object_um2 / px_area, connectivity=8)
        holes = remove_small_regions(~mask, self.min_hole_um2 / px_area, connectivity=4)
        return ~holes

    def params(self) -> dict[str, Any]:
        return {"name": "hsv", **asdict(self)}


@dataclass
class WholeSlideSegmenter:
    """Everything is tissue (for TMA cores or images that are already cropped to tissue)."""

    seg_mpp: float = 16.0

    def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        return np.ones(rgb.shape[:2], bool)

    def params(self) -> dict[str, Any]:
        return {"name": "all", **asdict(self)}


SEGMENTERS.add("hsv", HSVSegmenter)
SEGMENTERS.add("all", WholeSlideSegmenter)


def create_segmenter(name: str = "hsv", **kwargs: Any) -> Segmenter:
    """Build a registered segmenter (Hydra ``_target_`` for ``milkit/conf/segmenter/*.yaml``)."""
    return SEGMENTERS.create(name, **kwargs)


def segmenter_json(seg: Segmenter) -> str:
    return json.dumps(seg.params(), sort_keys=True)
