from __future__ import annotations

import cv2
import numpy as np
import pytest

from milkit.errors import ConfigError, MILKitError
from milkit.wsi.geojson import rasterize
from milkit.wsi.readers import open_slide
from milkit.wsi.segment import create_segmenter, remove_small_regions

pytestmark = pytest.mark.wsi  # needs OpenSlide and generated slides

SMALL = dict(median_px=5, close_px=3, min_object_um2=5_000, min_hole_um2=200)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("which, seg_mpp", [("generic", 4.0), ("aperio", 2.0), ("generic", 2.0)])
def test_recovers_planted_tissue(slides, which, seg_mpp):
    seg = create_segmenter("hsv", seg_mpp=seg_mpp, **SMALL)
    with open_slide(getattr(slides, which)) as r:
        rgb, scale = r.thumbnail(seg.seg_mpp)
        mask = seg(rgb, r.mpp * scale[0])
    truth = slides.scene.mask("tissue", mask.shape)
    assert _iou(mask, truth) >= 0.9
    # the planted lumen stays background
    ring = next(holes[0] for _, holes in slides.scene.tissue if holes)
    lumen = cv2.erode(rasterize([(ring, [])], mask.shape, scale).astype(np.uint8), np.ones((3, 3))).astype(bool)
    assert lumen.sum() > 10 and mask[lumen].mean() < 0.05


def test_fixed_threshold_and_blank_slide(slides):
    fixed = create_segmenter("hsv", seg_mpp=4.0, threshold=8, **SMALL)
    otsu = create_segmenter("hsv", seg_mpp=4.0, **SMALL)
    with open_slide(slides.blank) as r:
        rgb, scale = r.thumbnail(4.0)
        assert not otsu(rgb, 4.0).any() and not fixed(rgb, 4.0).any()  # JPEG noise is not tissue
    with open_slide(slides.generic) as r:
        rgb, _ = r.thumbnail(4.0)
    assert _iou(fixed(rgb, 4.0), slides.scene.mask("tissue", rgb.shape[:2])) >= 0.9
    assert create_segmenter("all")(rgb, 4.0).all()


def test_area_filters_in_square_microns():
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True        # 100 px
    mask[50:90, 50:90] = True        # 1600 px with a 4-px hole
    mask[60:62, 60:62] = False
    seg = create_segmenter("hsv", seg_mpp=2.0, median_px=1, close_px=0, min_object_um2=4 * 200, min_hole_um2=4 * 10)
    rgb = np.full((100, 100, 3), 255, np.uint8)
    rgb[mask] = (200, 100, 150)
    out = seg(rgb, 2.0)                # px area = 4 µm²: the 100-px piece (400 µm²) goes, the hole is filled
    assert not out[10:20, 10:20].any() and out[50:90, 50:90].all() and out.sum() == 1600
    kept = remove_small_regions(mask, 101)
    assert not kept[10:20, 10:20].any() and kept[50:90, 50:90].sum() == 1596


def test_bad_parameters():
    with pytest.raises(ConfigError, match="median_px"):
        create_segmenter("hsv", median_px=4)
    with pytest.raises(ConfigError, match="threshold"):
        create_segmenter("hsv", threshold="triangle")
    with pytest.raises(MILKitError, match="unknown segmenter"):
        create_segmenter("unet")
