"""The three per-slide stages. Each checks its existing output first and redoes it only when invalid.

segment → ``contours_geojson/<id>.geojson`` (+ ``thumbnails/<id>.jpg``); the GeoJSON records the segmenter
parameters, so a changed segmenter redoes it, while a GeoJSON without that record (edited and exported from
QuPath) is kept as the user's. tile → ``patches/<id>_patches.h5`` from the GeoJSON (rasterised at the
segmenter's resolution); its attributes record the GeoJSON's hash and ``min_tissue``, so an edited mask or
a new threshold re-tiles. extract → ``features_<encoder>/<id>.h5``, redone when coords, encoder or weights
changed.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from milkit.errors import DataError
from milkit.features.encoders import PatchEncoder
from milkit.features.extract import extract_features, resolve_precision
from milkit.utils.io import atomic_path
from milkit.wsi.geojson import (Polygon, from_geojson, load_geojson, mask_to_polygons, rasterize, read_geojson,
                                write_geojson)
from milkit.wsi.h5 import read_coords, validate_coords, validate_features, write_coords
from milkit.wsi.readers import SlideReader
from milkit.wsi.segment import Segmenter
from milkit.wsi.tiling import plan_geometry, polygon_fractions, select_patches

__all__ = ["SlidePaths", "segment_stage", "tile_stage", "extract_stage"]

_THUMB_MAX = 2048


@dataclass(frozen=True)
class SlidePaths:
    geojson: Path
    thumbnail: Path
    coords: Path
    features: Path | None

    @classmethod
    def under(cls, root: Path, slide_id: str, encoder: str | None) -> "SlidePaths":
        feats = root / f"features_{encoder}" / f"{slide_id}.h5" if encoder else None
        return cls(root / "contours_geojson" / f"{slide_id}.geojson", root / "thumbnails" / f"{slide_id}.jpg",
                   root / "patches" / f"{slide_id}_patches.h5", feats)

    def all(self) -> list[Path]:
        return [p for p in (self.geojson, self.thumbnail, self.coords, self.features) if p is not None]


def _segmentation_current(path: Path, seg: Segmenter) -> bool:
    if not path.is_file():
        return False
    try:
        obj = load_geojson(path)
        from_geojson(obj)
    except (DataError, KeyError, TypeError, ValueError, IndexError):
        return False
    recorded = obj.get("milkit", {}).get("segmenter") if isinstance(obj, dict) else None
    return recorded is None or recorded == seg.params()  # no record: a user-edited file, keep it


def _write_thumbnail(path: Path, rgb: np.ndarray, polygons: list[Polygon], scale: tuple[float, float]) -> None:
    f = min(1.0, _THUMB_MAX / max(rgb.shape[:2]))
    img = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else rgb.copy()
    px = lambda ring: np.round((ring / scale - 0.5) * f).astype(np.int32).reshape(-1, 1, 2)  # noqa: E731
    for exterior, holes in polygons:
        cv2.polylines(img, [px(exterior)], True, (0, 200, 0), 2)
        if holes:
            cv2.polylines(img, [px(h) for h in holes], True, (0, 0, 255), 2)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def segment_stage(reader: SlideReader, seg: Segmenter, paths: SlidePaths, tissue: Path | None = None) -> bool:
    """Segment unless a current GeoJSON exists, and draw the thumbnail with its contours unless it exists;
    returns whether work was done. ``tissue``: a user's GeoJSON used instead of segmenting (only drawn)."""
    source = tissue or paths.geojson
    current = tissue is not None or _segmentation_current(paths.geojson, seg)
    drawn = paths.thumbnail.is_file() and paths.thumbnail.stat().st_mtime >= source.stat().st_mtime if current else False
    if current and drawn:
        return False
    rgb, scale = reader.thumbnail(seg.seg_mpp)
    if current:
        polygons = read_geojson(source)
    else:
        mask = seg(rgb, reader.mpp * (scale[0] + scale[1]) / 2)
        polygons = mask_to_polygons(mask, scale)
        write_geojson(paths.geojson, polygons, meta={"segmenter": seg.params(), "slide": str(reader.path)})
    _write_thumbnail(paths.thumbnail, rgb, polygons, scale)
    return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tile_stage(reader: SlideReader, seg: Segmenter, tissue: Path, paths: SlidePaths, target_mpp: float,
               patch_size: int, overlap: int, min_tissue: float) -> tuple[int, bool]:
    """Tile from the tissue GeoJSON unless a current coordinates file exists; returns (N, did work)."""
    if not tissue.is_file():
        raise DataError(f"{tissue}: no tissue GeoJSON (run the 'segment' stage or provide one)")
    digest = _sha256(tissue)
    expected = {"patch_size": patch_size, "overlap": overlap, "target_mpp": target_mpp, "min_tissue": min_tissue,
                "tissue_sha256": digest, "level0_mpp": reader.mpp}  # the MPP may come from an override
    try:
        return len(validate_coords(paths.coords, expected)), False
    except DataError:
        pass
    geom = plan_geometry(reader, target_mpp, patch_size, overlap)
    obj = load_geojson(tissue)
    recorded = obj.get("milkit", {}).get("segmenter") if isinstance(obj, dict) else None
    tw, th = reader.thumbnail_size(seg.seg_mpp)
    scale = (geom.level0_width / tw, geom.level0_height / th)
    mask = rasterize(read_geojson(tissue), (th, tw), scale)
    coords = select_patches(geom, mask, scale, min_tissue)
    mag = reader.objective_power or 10.0 / geom.level0_mpp
    attrs: dict[str, Any] = {
        **geom.attrs(), **expected, "name": paths.coords.name.removesuffix("_patches.h5"),
        "level0_magnification": mag, "mpp_source": reader.mpp_result.source, "reader": reader.name,
        "segmenter": json.dumps(recorded or {"name": "geojson", "path": str(tissue)}, sort_keys=True),
    }
    write_coords(paths.coords, coords, attrs)
    return len(coords), True


def extract_stage(reader: SlideReader, encoder: PatchEncoder, paths: SlidePaths, annotations: Path | None,
                  label_min_fraction: float, progress: Any = None, **kw: Any) -> tuple[int, float | None]:
    """Extract unless a current features file exists; returns (N, seconds spent extracting or None)."""
    if not paths.coords.is_file():
        raise DataError(f"{paths.coords}: no coordinates file (run the 'tile' stage first)")
    coords, attrs = read_coords(paths.coords)
    if len(coords) == 0:
        return 0, None
    labels = label_attrs = None
    if annotations is not None and annotations.is_file():
        dims = (int(attrs["level0_width"]), int(attrs["level0_height"]))
        frac = polygon_fractions(read_geojson(annotations), coords, float(attrs["patch_size_level0"]), dims)
        labels = (frac >= label_min_fraction).astype(np.int64)
        label_attrs = {"source": str(annotations), "min_fraction": label_min_fraction}
    precision = resolve_precision(encoder, kw.get("device") or torch.device("cpu"), kw.get("precision"))
    expected = {"encoder": encoder.spec.name, "weights_hash": encoder.weights_id, "precision": precision}
    try:
        validate_features(paths.features, coords, encoder.dim, expected, labels=labels is not None,
                          dtype=kw.get("feature_dtype", "float32"))
        return len(coords), None
    except DataError:
        pass
    t0 = time.perf_counter()
    n = extract_features(reader.path, coords, attrs, encoder, paths.features, reader=reader.name,
                         instance_labels=labels, label_attrs=label_attrs, progress=progress, **kw)
    return n, time.perf_counter() - t0
