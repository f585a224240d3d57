"""Per-tile outputs: a GeoJSON of scored tiles that QuPath opens, and a montage of the top/bottom patches.

GeoJSON: one ``Feature`` per patch, a level-0 square ``Polygon`` with ``objectType: "tile"`` and the scores
as QuPath ``measurements`` (a name → number map, QuPath ≥ 0.4), so *Measure → Show measurement maps*
colours the tiles by score. The file is streamed feature by feature (no giant string in memory).

Montage: the ``k`` highest- and ``k`` lowest-scoring patches read at the patch's own resolution (the
training ``target_mpp``, ``patch_size`` px, from the best pyramid level like extraction), in rows of
``cols``, top patches framed red and bottom patches blue, each labelled with its rank and score.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from milkit.utils.io import atomic_path
from milkit.wsi.readers import SlideReader

__all__ = ["write_tiles_geojson", "top_bottom", "montage"]

_RED, _BLUE, _WHITE = (220, 30, 30), (30, 80, 220), (255, 255, 255)


def write_tiles_geojson(path: str | os.PathLike, coords: np.ndarray, size_level0: float,
                        measurements: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> Path:
    """Tiles ``[x, x+size) × [y, y+size)`` (level-0 px) with one measurement per entry of ``measurements``."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    names = list(measurements)
    cols = [np.asarray(measurements[n], np.float64) for n in names]
    s = float(size_level0)
    with atomic_path(path) as tmp, tmp.open("w") as fh:
        fh.write('{"type": "FeatureCollection", ')
        if meta is not None:
            fh.write(f'"milkit": {json.dumps(meta)}, ')
        fh.write('"features": [')
        for i, (x, y) in enumerate(coords.tolist()):
            ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
            props = {"objectType": "tile", "isLocked": True,
                     "measurements": {n: round(float(c[i]), 6) for n, c in zip(names, cols)}}
            feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
            fh.write(("," if i else "") + json.dumps(feature))
        fh.write("]}")
    return Path(path)


def top_bottom(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest scores (descending) and of up to ``k`` lowest among the rest (ascending)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    top = order[:k]
    rest = order[len(top):]
    return top, rest[::-1][:k]


def _cell(tile: np.ndarray, colour: tuple[int, int, int], text: str, border: int) -> np.ndarray:
    cell = cv2.copyMakeBorder(tile, border, border, border, border, cv2.BORDER_CONSTANT, value=colour)
    scale = max(0.3, tile.shape[0] / 256 * 0.5)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(cell, (border, border), (border + tw + 4, border + th + base + 4), (0, 0, 0), -1)
    cv2.putText(cell, text, (border + 2, border + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE, 1, cv2.LINE_AA)
    return cell


def _grid(cells: list[np.ndarray], cols: int, cell_px: int) -> np.ndarray:
    rows = -(-len(cells) // cols)
    out = np.full((rows * cell_px, cols * cell_px, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        out[r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = cell
    return out


def montage(reader: SlideReader, coords: np.ndarray, scores: np.ndarray, read_level: int, read_size: int,
            patch_size: int, k: int = 8, cols: int = 8, border: int = 4) -> np.ndarray:
    """RGB montage: the top-``k`` patches (red frames) above the bottom-``k`` (blue), each at ``patch_size`` px."""
    top, bottom = top_bottom(scores, k)
    cols = max(1, min(cols, k, len(scores)))
    cell_px = patch_size + 2 * border
    blocks = []
    for idx, colour, label in ((top, _RED, "top"), (bottom, _BLUE, "low")):
        cells = []
        for rank, i in enumerate(idx, 1):
            x, y = (int(v) for v in coords[i])
            tile = reader.read_region((x, y), read_level, (read_size, read_size))
            if read_size != patch_size:
                interp = cv2.INTER_AREA if read_size > patch_size else cv2.INTER_LINEAR
                tile = cv2.resize(tile, (patch_size, patch_size), interpolation=interp)
            cells.append(_cell(tile, colour, f"{label} {rank}: {float(scores[i]):.3g}", border))
        if cells:
            blocks.append(_grid(cells, cols, cell_px))
    gap = np.full((max(4, border * 2), cols * cell_px, 3), 255, np.uint8)
    return np.concatenate([b for blk in blocks for b in (blk, gap)][:-1], axis=0)
