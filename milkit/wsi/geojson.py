"""Tissue/annotation polygons in level-0 pixels: mask ↔ polygons ↔ GeoJSON (QuPath opens and edits it).

A polygon is ``(exterior, holes)`` with ``(K, 2)`` float ``(x, y)`` arrays in level-0 pixels. Masks cover
the whole slide; ``scale = (sx, sy)`` is level-0 pixels per mask pixel and mask pixel ``(i, j)`` has its
centre at level-0 ``((j + 0.5) sx, (i + 0.5) sy)``. ``rasterize(mask_to_polygons(m))`` gives back ``m``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from milkit.errors import DataError
from milkit.utils.io import atomic_path

__all__ = ["Polygon", "mask_to_polygons", "rasterize", "to_geojson", "from_geojson", "write_geojson",
           "read_geojson", "load_geojson"]

Polygon = tuple[np.ndarray, list[np.ndarray]]
_SHIFT = 4  # fixed-point bits for sub-pixel vertices in cv2 drawing


def mask_to_polygons(mask: np.ndarray, scale: tuple[float, float]) -> list[Polygon]:
    """Outer contours with their holes (OpenCV two-level hierarchy), mapped to level-0 pixel centres."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    sx, sy = scale
    to_l0 = lambda c: (c[:, 0, :].astype(np.float64) + 0.5) * (sx, sy)  # noqa: E731
    polys: list[Polygon] = []
    for i, (_, _, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        holes = []
        while child != -1:
            holes.append(to_l0(contours[child]))
            child = hierarchy[child][0]
        polys.append((to_l0(contours[i]), holes))
    return polys


def _to_px(ring: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    px = (np.asarray(ring, np.float64) / scale - 0.5) * (1 << _SHIFT)
    return np.round(px).astype(np.int32).reshape(-1, 1, 2)


def rasterize(polygons: Iterable[Polygon], shape: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """Boolean mask ``shape = (h, w)``: the union of exteriors minus their own holes (hole borders kept)."""
    out = np.zeros(shape, np.uint8)
    h, w = shape
    for exterior, holes in polygons:
        ext = _to_px(exterior, scale)
        lo = np.maximum(ext.min(axis=(0, 1)) >> _SHIFT, 0)
        hi = np.minimum((ext.max(axis=(0, 1)) >> _SHIFT) + 2, (w, h))
        if (hi <= lo).any():
            continue
        # each polygon in its own bounding-box buffer, so a hole never erases another polygon inside it
        buf = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
        off = lo.astype(np.int32) << _SHIFT
        cv2.fillPoly(buf, [ext - off], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        if holes:
            rings = [_to_px(r, scale) - off for r in holes]
            cv2.fillPoly(buf, rings, 0, lineType=cv2.LINE_8, shift=_SHIFT)
            cv2.polylines(buf, rings, True, 1, lineType=cv2.LINE_8, shift=_SHIFT)
        out[lo[1]:hi[1], lo[0]:hi[0]] |= buf
    return out.astype(bool)


def _ring(points: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in points]
    return pts + pts[:1] if pts and pts[0] != pts[-1] else pts


def to_geojson(polygons: Iterable[Polygon], name: str = "Tissue", color: tuple[int, int, int] = (0, 160, 0),
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A FeatureCollection of Polygon annotations classified as ``name`` (QuPath's GeoJSON flavour).

    ``meta`` is stored as the collection's foreign member ``milkit`` (QuPath ignores and drops it)."""
    feats = []
    for exterior, holes in polygons:
        if len(exterior) < 3:
            continue  # a line or a point has no area; QuPath rejects such polygons
        rings = [_ring(exterior)] + [_ring(h) for h in holes if len(h) >= 3]
        props = {"objectType": "annotation", "classification": {"name": name, "color": list(color)}}
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                      "properties": props})
    out: dict[str, Any] = {"type": "FeatureCollection", "features": feats}
    if meta is not None:
        out["milkit"] = meta
    return out


def _geometries(obj: Any) -> Iterable[dict[str, Any]]:
    if isinstance(obj, list):
        for item in obj:
            yield from _geometries(item)
    elif isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            yield from _geometries(obj.get("features", []))
        elif kind == "Feature":
            yield from _geometries(obj.get("geometry") or {})
        elif kind == "GeometryCollection":
            yield from _geometries(obj.get("geometries", []))
        elif kind in ("Polygon", "MultiPolygon"):
            yield obj


def from_geojson(obj: Any) -> list[Polygon]:
    """Polygons and MultiPolygons of a GeoJSON object (other geometry types carry no area and are skipped)."""
    polys: list[Polygon] = []
    for geom in _geometries(obj):
        parts = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for rings in parts:
            arrs = [np.asarray(r, np.float64)[:, :2] for r in rings if len(r) >= 3]
            if arrs:
                polys.append((arrs[0], arrs[1:]))
    return polys


def write_geojson(path: str | os.PathLike, polygons: Iterable[Polygon], name: str = "Tissue",
                  meta: dict[str, Any] | None = None) -> Path:
    """Write atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_geojson(polygons, name, meta=meta)))
    return Path(path)


def load_geojson(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed GeoJSON object (``DataError`` when the file is missing or not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable GeoJSON file ({str(exc).splitlines()[0]})") from None


def read_geojson(path: str | os.PathLike) -> list[Polygon]:
    """Polygons of a GeoJSON file, in level-0 pixels."""
    obj = load_geojson(path)
    try:
        return from_geojson(obj)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: malformed GeoJSON geometry ({exc!r})") from None
