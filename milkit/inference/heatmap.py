"""Instance-score heatmaps over the slide thumbnail, without ever allocating a level-0 canvas.

Scores are rank-normalised within the slide (TRIDENT/CLAM "percentile" scores: the patch with the k-th
lowest of N scores gets ``(k-1)/(N-1)``), so a heatmap shows where the model looks relative to the rest of
the slide whatever the scale of its raw scores. Each patch is painted over the thumbnail pixels whose centres
lie inside its level-0 box (overlapping patches are averaged) with difference arrays and two cumulative
sums, in O(#patches + #pixels) without a Python loop over patches. Every array has the thumbnail's size
(longest side ``max_size``), and the thumbnail itself is read chunk-wise from the best pyramid level
(``SlideReader.thumbnail``), so memory does not grow with the slide: a 100k × 100k slide renders like a
small one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from milkit.errors import ConfigError
from milkit.utils.io import atomic_path
from milkit.wsi.geojson import Polygon, rasterize
from milkit.wsi.readers import SlideReader

__all__ = ["Heatmap", "rank_normalise", "paint_boxes", "colormap_lut", "render_heatmap", "vis_mpp_for",
           "write_png"]


def rank_normalise(scores: np.ndarray) -> np.ndarray:
    """Ranks of ``scores`` ``(N,)`` scaled to [0, 1]; ties share their mean rank; one instance gets 1."""
    from scipy.stats import rankdata

    s = np.asarray(scores, np.float64)
    if s.size <= 1:
        return np.ones_like(s)
    return (rankdata(s, method="average") - 1.0) / (s.size - 1.0)


def _pixel_span(start: np.ndarray, size: float, scale: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[lo, hi)`` whose centres ``(i + 0.5) * scale`` fall in ``[start, start + size)``; at least one."""
    lo = np.ceil(start / scale - 0.5).astype(np.int64)
    hi = np.maximum(np.ceil((start + size) / scale - 0.5).astype(np.int64), lo + 1)
    return np.clip(lo, 0, limit), np.clip(hi, 0, limit)


def paint_boxes(coords: np.ndarray, size: float, values: np.ndarray, shape: tuple[int, int],
                scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(h, w)`` float32 of ``values`` over the level-0 boxes ``[x, x+size) × [y, y+size)`` covering
    each pixel, and the bool coverage ``(h, w)``. ``scale`` is level-0 px per canvas pixel."""
    h, w = shape
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    x0, x1 = _pixel_span(coords[:, 0], size, scale[0], w)
    y0, y1 = _pixel_span(coords[:, 1], size, scale[1], h)
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1), np.int64)
    for acc, v in ((total, np.asarray(values, np.float64)), (count, np.ones(len(coords), np.int64))):
        for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
            np.add.at(acc, (ys, xs), sign * v)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = count.cumsum(0).cumsum(1)[:h, :w]
    covered = count > 0
    mean = np.zeros((h, w), np.float32)
    mean[covered] = total[covered] / count[covered]
    return mean, covered


def colormap_lut(name: str) -> np.ndarray:
    """``(256, 3)`` uint8 RGB lookup table of a matplotlib colour map."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ConfigError(f"heatmap.cmap={name!r}: not a matplotlib colour map (e.g. jet, viridis, coolwarm)") from None
    return np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


@dataclass
class Heatmap:
    """The rendered overlay. ``values``: per-pixel rank-normalised score (0 where nothing is drawn)."""

    image: np.ndarray            # (h, w, 3) uint8 RGB
    values: np.ndarray           # (h, w) float32
    shown: np.ndarray            # (h, w) bool, where the colour overlay is drawn
    scale: tuple[float, float]   # level-0 px per heatmap px
    mpp: float                   # µm per heatmap px


def vis_mpp_for(reader: SlideReader, max_size: int, vis_mpp: float) -> float:
    """``vis_mpp`` µm/px, coarsened so that the longest side of the heatmap is at most ``max_size`` px."""
    if max_size < 16:
        raise ConfigError(f"heatmap.max_size={max_size}: use at least 16 px")
    return max(float(vis_mpp), reader.mpp * max(reader.dimensions) / max_size)


def render_heatmap(reader: SlideReader, coords: np.ndarray, size_level0: float, scores: np.ndarray,
                   tissue: list[Polygon] | None = None, *, max_size: int = 2048, vis_mpp: float | None = None,
                   patch_px: float = 16.0, cmap: str = "jet", alpha: float = 0.5, tissue_only: bool = True) -> Heatmap:
    """Rank-normalised ``scores`` ``(N,)`` of the patches at level-0 ``coords`` ``(N, 2)`` blended with
    opacity ``alpha`` over the thumbnail; with ``tissue_only`` only where ``tissue`` polygons cover it too.

    Resolution: ``vis_mpp`` µm/px, by default such that a patch spans ``patch_px`` pixels, and never finer
    than what keeps the longest side within ``max_size`` px."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"heatmap.alpha={alpha}: must be between 0 and 1")
    lut = colormap_lut(cmap)
    mpp = vis_mpp_for(reader, max_size, vis_mpp or reader.mpp * size_level0 / patch_px)
    thumb, scale = reader.thumbnail(mpp)
    shape = thumb.shape[:2]
    values, shown = paint_boxes(coords, size_level0, rank_normalise(scores), shape, scale)
    if tissue_only and tissue is not None:
        shown &= rasterize(tissue, shape, scale)
    colour = lut[np.round(values[shown] * 255).astype(np.intp)].astype(np.float32)
    out = thumb.copy()
    out[shown] = np.round(alpha * colour + (1.0 - alpha) * thumb[shown]).astype(np.uint8)
    values[~shown] = 0.0
    return Heatmap(out, values, shown, scale, reader.mpp * (scale[0] + scale[1]) / 2)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG, atomically."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ConfigError(f"{path}: cannot encode a {rgb.shape} image as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)
