from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from milkit.errors import DataError
from milkit.wsi.geojson import from_geojson, mask_to_polygons, rasterize, read_geojson, to_geojson, write_geojson


def _random_mask(rng: np.random.Generator, specks: bool = True) -> np.ndarray:
    m = np.zeros((90, 120), np.uint8)
    for _ in range(4):
        centre = (int(rng.integers(5, 115)), int(rng.integers(5, 85)))
        cv2.ellipse(m, centre, (int(rng.integers(3, 35)), int(rng.integers(3, 25))), float(rng.integers(0, 180)),
                    0, 360, 1, -1)
    for _ in range(3):  # holes, some with islands inside
        cv2.circle(m, (int(rng.integers(5, 115)), int(rng.integers(5, 85))), int(rng.integers(2, 9)), 0, -1)
    return (m | (rng.random(m.shape) < (0.003 if specks else 0))).astype(bool)


def test_mask_polygon_round_trip_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = _random_mask(rng)
        scale = (7.3, 9.1)
        polys = mask_to_polygons(mask, scale)
        np.testing.assert_array_equal(rasterize(polys, mask.shape, scale), mask)


def test_polygons_in_level0_pixel_centres():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    (ext, holes), = mask_to_polygons(mask, (4.0, 4.0))
    assert holes == []
    assert ext[:, 0].min() == (3 + 0.5) * 4 and ext[:, 0].max() == (6 + 0.5) * 4
    assert ext[:, 1].min() == (2 + 0.5) * 4 and ext[:, 1].max() == (4 + 0.5) * 4


def test_geojson_file_round_trip(tmp_path):
    mask = _random_mask(np.random.default_rng(1), specks=False)  # 1-2 px specks have no polygon area
    polys = mask_to_polygons(mask, (2.0, 2.0))
    path = write_geojson(tmp_path / "t.geojson", polys, meta={"segmenter": {"name": "hsv"}})
    obj = json.loads(path.read_text())
    assert obj["type"] == "FeatureCollection" and obj["milkit"] == {"segmenter": {"name": "hsv"}}
    feat = obj["features"][0]
    assert feat["properties"]["classification"]["name"] == "Tissue"
    assert feat["geometry"]["coordinates"][0][0] == feat["geometry"]["coordinates"][0][-1]  # closed rings
    np.testing.assert_array_equal(rasterize(read_geojson(path), mask.shape, (2.0, 2.0)), mask)


def test_reads_qupath_style_variants():
    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]
    features = [  # QuPath exports a bare list of features; MultiPolygons; points carry no area
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[square, hole], [square]]}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}},
        {"type": "Feature", "geometry": {"type": "GeometryCollection",
                                         "geometries": [{"type": "Polygon", "coordinates": [square]}]}},
    ]
    polys = from_geojson(features)
    assert len(polys) == 3 and len(polys[0][1]) == 1 and polys[1][1] == []
    assert from_geojson(to_geojson(polys))[0][0].shape == (5, 2)


def test_bad_geojson(tmp_path):
    (tmp_path / "a.geojson").write_text("{not json")
    with pytest.raises(DataError, match="a.geojson: not a readable GeoJSON"):
        read_geojson(tmp_path / "a.geojson")
    (tmp_path / "b.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [[1, 2, 3]]}))
    with pytest.raises(DataError, match="b.geojson: malformed"):
        read_geojson(tmp_path / "b.geojson")
    with pytest.raises(DataError, match="not a readable"):
        read_geojson(tmp_path / "missing.geojson")
