from __future__ import annotations

import csv
import json
import tracemalloc

import cv2
import numpy as np
import pytest

from milkit.wsi.readers import open_slide
from milkit.wsi.synthetic import make_scene, write_synthetic_cohort, write_synthetic_slide

pytestmark = pytest.mark.wsi  # needs OpenSlide and generated slides


def test_scene_ground_truth(slides):
    tissue = slides.scene.mask("tissue", (512, 512))
    tumour = slides.scene.mask("tumour", (512, 512))
    assert 0.15 < tissue.mean() < 0.6 and tumour.sum() > 100
    assert not (tumour & ~tissue).any()
    assert sum(len(h) for _, h in slides.scene.tissue) == 1  # one lumen, in a blob without tumour


def test_pixels_follow_the_masks(slides):
    with open_slide(slides.generic) as r:
        rgb, _ = r.thumbnail(4.0)
    tissue = slides.scene.mask("tissue", rgb.shape[:2])
    tumour = slides.scene.mask("tumour", rgb.shape[:2])
    k = np.ones((5, 5), np.uint8)
    inner = lambda m: cv2.erode(m.astype(np.uint8), k).astype(bool)  # noqa: E731
    background = ~cv2.dilate(tissue.astype(np.uint8), k).astype(bool)
    assert rgb[background].min() >= 240  # white, up to JPEG ringing
    normal = rgb[inner(tissue & ~tumour)].mean(0)
    cancer = rgb[inner(tumour)].mean(0)
    assert np.abs(normal - cancer).sum() > 60  # tumour is visibly darker / bluer


def test_large_slide_is_written_tile_wise(tmp_path):
    scene = make_scene(16_000, 12_800, n_tissue=3, seed=1)
    tracemalloc.start()
    path = write_synthetic_slide(tmp_path / "big.tiff", scene, mpp=0.25, sparse_background=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 80e6  # a full RGB level 0 would be 614 MB
    assert path.stat().st_size < 20e6
    with open_slide(path) as r:
        assert r.dimensions == (16_000, 12_800) and r.level_count == 4 and r.mpp == 0.25


def test_cohort(tmp_path):
    csv_path = write_synthetic_cohort(tmp_path, n_slides=4, width=1024, height=768, positive_fraction=0.5)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["label"] for r in rows].count("1") == 2 and len({r["case_id"] for r in rows}) == 4
    for r in rows:
        ann = json.loads((tmp_path / "annotations" / f"{r['slide_id']}.geojson").read_text())
        assert (len(ann["features"]) > 0) == (r["label"] == "1")
        assert (tmp_path / "slides" / f"{r['slide_id']}.tiff").is_file()
