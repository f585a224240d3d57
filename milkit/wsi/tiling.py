"""Patch grid at a physical resolution, and the tissue fraction of every patch at once.

Geometry: a patch is ``patch_size`` px at ``target_mpp``, i.e. ``patch_size * downsample`` level-0 px with
``downsample = target_mpp / level0_mpp``. The grid starts at (0, 0), steps ``(patch_size - overlap) *
downsample`` level-0 px (a float; each coordinate is rounded, so spacing does not drift on non-integer
downsamples) and keeps only patches that lie wholly inside the slide (no padding). Pixels are read from the
coarsest level whose downsample does not exceed ``downsample`` and resized to the encoder input later.

Tissue fraction: the exact area of each patch box covered by the mask, from the mask's summed-area table
sampled bilinearly at the (fractional) box corners — the integral of a piecewise-constant image is bilinear
inside each pixel, so this is exact, and it costs O(#patches) after one O(#mask pixels) cumulative sum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from milkit.errors import ConfigError
from milkit.wsi.geojson import Polygon, rasterize
from milkit.wsi.readers import SlideReader

__all__ = ["PatchGeometry", "plan_geometry", "grid_coords", "box_fractions", "select_patches",
           "polygon_fractions", "summed_area_table"]


@dataclass(frozen=True)
class PatchGeometry:
    patch_size: int            # px at target resolution
    overlap: int               # px at target resolution
    target_mpp: float
    level0_mpp: float
    downsample: float          # level-0 px per target px
    patch_size_level0: int
    step_level0: float
    read_level: int
    read_downsample: float
    read_size: int             # px read at read_level (resized to the encoder input on the device)
    level0_width: int
    level0_height: int
    read_level_dim: tuple[int, int]

    def attrs(self) -> dict[str, Any]:
        """The geometry part of the coordinate-file attributes (docs/architecture.md), CLAM/TRIDENT names included."""
        return {
            "patch_size": self.patch_size, "patch_size_level0": self.patch_size_level0,
            "target_mpp": self.target_mpp, "level0_mpp": self.level0_mpp,
            "target_magnification": 10.0 / self.target_mpp, "overlap": self.overlap,
            "patch_level": self.read_level, "read_level": self.read_level, "downsample": self.downsample,
            "read_downsample": self.read_downsample, "read_size": self.read_size,
            "level_dim": np.asarray(self.read_level_dim, np.int64),
            "level0_width": self.level0_width, "level0_height": self.level0_height,
        }


def plan_geometry(reader: SlideReader, target_mpp: float, patch_size: int, overlap: int = 0) -> PatchGeometry:
    """Resolve patch geometry for one slide (raises ``DataError`` if the slide has no MPP)."""
    if patch_size <= 0 or not 0 <= overlap < patch_size:
        raise ConfigError(f"need patch_size > 0 and 0 <= overlap < patch_size, got {patch_size}, {overlap}")
    if target_mpp <= 0:
        raise ConfigError(f"target_mpp must be positive, got {target_mpp}")
    mpp0 = reader.mpp
    ds = target_mpp / mpp0
    level = reader.best_level(ds)
    lds = reader.level_downsamples[level]
    w0, h0 = reader.dimensions
    return PatchGeometry(
        patch_size=int(patch_size), overlap=int(overlap), target_mpp=float(target_mpp), level0_mpp=float(mpp0),
        downsample=ds, patch_size_level0=max(1, round(patch_size * ds)), step_level0=(patch_size - overlap) * ds,
        read_level=level, read_downsample=lds, read_size=max(1, round(patch_size * ds / lds)),
        level0_width=w0, level0_height=h0, read_level_dim=reader.level_dimensions[level],
    )


def _axis(length: int, size: int, step: float) -> np.ndarray:
    if length < size:
        return np.zeros(0, np.int64)
    n = int(np.floor((length - size) / step + 1e-9)) + 1
    return np.round(np.arange(n) * step).astype(np.int64)


def grid_coords(geom: PatchGeometry) -> np.ndarray:
    """All level-0 top-left corners ``(N, 2)`` int64, row-major (y outer, x inner)."""
    xs = _axis(geom.level0_width, geom.patch_size_level0, geom.step_level0)
    ys = _axis(geom.level0_height, geom.patch_size_level0, geom.step_level0)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """``S[i, j] = mask[:i, :j].sum()``, shape ``(h+1, w+1)``; int32 while it cannot overflow."""
    dtype = np.int32 if mask.size < 2**31 else np.int64
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype)
    np.cumsum(np.cumsum(mask, axis=0, dtype=dtype), axis=1, out=sat[1:, 1:])
    return sat


def _sample(sat: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear sample of the summed-area table ``sat`` ((h+1, w+1)) at columns ``u``, rows ``v``."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    u, v = np.clip(u, 0, w), np.clip(v, 0, h)
    u0, v0 = np.minimum(np.floor(u).astype(np.int64), w - 1), np.minimum(np.floor(v).astype(np.int64), h - 1)
    fu, fv = u - u0, v - v0
    s00, s01 = sat[v0, u0].astype(np.float64), sat[v0, u0 + 1].astype(np.float64)
    s10, s11 = sat[v0 + 1, u0].astype(np.float64), sat[v0 + 1, u0 + 1].astype(np.float64)
    top = s00 * (1 - fu) + s01 * fu
    bot = s10 * (1 - fu) + s11 * fu
    return top * (1 - fv) + bot * fv


def box_fractions(mask: np.ndarray, scale: tuple[float, float], coords: np.ndarray, size: float) -> np.ndarray:
    """Fraction ``(N,)`` of each level-0 box ``[x, x+size) × [y, y+size)`` covered by ``mask``.

    ``mask`` covers the whole slide with ``scale = (sx, sy)`` level-0 px per mask px.
    """
    if len(coords) == 0:
        return np.zeros(0)
    sat = summed_area_table(mask)
    sx, sy = scale
    x0, y0 = coords[:, 0] / sx, coords[:, 1] / sy
    x1, y1 = (coords[:, 0] + size) / sx, (coords[:, 1] + size) / sy
    area = _sample(sat, x1, y1) - _sample(sat, x0, y1) - _sample(sat, x1, y0) + _sample(sat, x0, y0)
    return np.clip(area / ((size / sx) * (size / sy)), 0.0, 1.0)


def select_patches(geom: PatchGeometry, mask: np.ndarray, scale: tuple[float, float],
                   min_tissue: float) -> np.ndarray:
    """Grid patches whose tissue fraction is at least ``min_tissue`` (0 keeps patches touching tissue)."""
    coords = grid_coords(geom)
    frac = box_fractions(mask, scale, coords, geom.patch_size_level0)
    keep = frac >= min_tissue if min_tissue > 0 else frac > 0
    return coords[keep]


def polygon_fractions(polygons: list[Polygon], coords: np.ndarray, size: float, dims: tuple[int, int],
                      px_per_patch: int = 16) -> np.ndarray:
    """Fraction of each level-0 box covered by ``polygons`` (e.g. tumour annotations), from a raster with
    about ``px_per_patch`` pixels per box side."""
    px = max(1.0, size / px_per_patch)
    w, h = max(1, int(np.ceil(dims[0] / px))), max(1, int(np.ceil(dims[1] / px)))
    scale = (dims[0] / w, dims[1] / h)
    return box_fractions(rasterize(polygons, (h, w), scale), scale, coords, size)
