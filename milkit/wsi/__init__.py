"""Whole-slide images: readers, MPP, tissue segmentation, GeoJSON, tile grids, HDF5 outputs, synthetic slides."""
from __future__ import annotations

from milkit.wsi.geojson import mask_to_polygons, rasterize, read_geojson, write_geojson
from milkit.wsi.h5 import feature_writer, read_coords, validate_coords, validate_features, write_coords
from milkit.wsi.mpp import resolve_mpp
from milkit.wsi.readers import READERS, SlideReader, open_slide
from milkit.wsi.segment import SEGMENTERS, create_segmenter
from milkit.wsi.synthetic import make_scene, write_synthetic_cohort, write_synthetic_image, write_synthetic_slide
from milkit.wsi.tiling import (PatchGeometry, box_fractions, grid_coords, plan_geometry, polygon_fractions,
                               select_patches)

__all__ = [
    "READERS", "SEGMENTERS", "PatchGeometry", "SlideReader", "box_fractions", "create_segmenter",
    "feature_writer", "grid_coords", "make_scene", "mask_to_polygons", "open_slide", "plan_geometry",
    "polygon_fractions", "rasterize", "read_coords", "read_geojson", "resolve_mpp", "select_patches", "validate_coords",
    "validate_features", "write_coords", "write_geojson", "write_synthetic_cohort", "write_synthetic_image",
    "write_synthetic_slide",
]
