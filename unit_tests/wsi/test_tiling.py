from __future__ import annotations

import numpy as np
import pytest

from milkit.errors import ConfigError
from milkit.wsi.geojson import rasterize
from milkit.wsi.readers import open_slide
from milkit.wsi.tiling import box_fractions, grid_coords, plan_geometry, polygon_fractions, select_patches

pytestmark = pytest.mark.wsi  # needs OpenSlide and generated slides


def _expected_axis(length: int, size: int, step: float) -> list[int]:
    out, i = [], 0
    while round(i * step) + size <= length:
        out.append(round(i * step))
        i += 1
    return out


# (slide, forced level-0 mpp or None, target_mpp, patch_size, overlap) -> (read_level, read_size, ps_level0)
CASES = [
    ("generic", None, 0.5, 256, 0, 0, 256, 256),     # native resolution
    ("generic", None, 1.0, 128, 0, 0, 256, 256),     # 2x: no such level, read level 0 and resize
    ("generic", None, 2.0, 128, 0, 1, 128, 512),     # 4x: exactly level 1
    ("generic", None, 3.0, 100, 20, 1, 150, 600),    # 6x with overlap: level 1 then resize
    ("aperio", None, 0.5, 256, 0, 0, 512, 512),      # "20x from a 40x scan"
    ("aperio", None, 4.0, 64, 0, 2, 64, 1024),       # 16x: level 2
    ("aperio", 0.2527, 0.5, 256, 0, 0, 507, 507),    # non-integer downsample (1.9786)
]


@pytest.mark.parametrize("which, mpp0, target, ps, ovl, level, read_size, ps0", CASES)
def test_grid_geometry_and_counts(slides, which, mpp0, target, ps, ovl, level, read_size, ps0):
    with open_slide(getattr(slides, which), mpp=mpp0, force_mpp=mpp0 is not None) as r:
        geom = plan_geometry(r, target, ps, ovl)
        assert (geom.read_level, geom.read_size, geom.patch_size_level0) == (level, read_size, ps0)
        ds = target / r.mpp
        assert geom.downsample == pytest.approx(ds)
        coords = grid_coords(geom)
        axis = _expected_axis(2048, ps0, (ps - ovl) * ds)
        assert len(coords) == len(axis) ** 2
        np.testing.assert_array_equal(np.unique(coords[:, 0]), axis)
        assert coords.dtype == np.int64 and (coords[1:, 1] >= coords[:-1, 1]).all()  # row-major
        # the pixels read at (level, read_size) show the same area as level 0 at (ps0, ps0)
        x, y = coords[len(coords) // 2]
        tile = r.read_region((x, y), level, (read_size, read_size)).astype(float)
        ref = r.read_region((x, y), 0, (ps0, ps0)).astype(float)
        assert abs(tile.mean() - ref.mean()) < 3
        attrs = geom.attrs()
        assert attrs["target_magnification"] == pytest.approx(10 / target) and attrs["patch_level"] == level


def test_box_fractions_are_exact():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 70)) < 0.5
    big = np.kron(mask, np.ones((4, 4), bool))  # the mask at 1 level-0 px per px
    size = 37
    coords = np.stack([rng.integers(0, 280 - size, 300), rng.integers(0, 200 - size, 300)], 1)
    brute = np.array([big[y:y + size, x:x + size].mean() for x, y in coords])
    np.testing.assert_allclose(box_fractions(mask, (4.0, 4.0), coords, size), brute, atol=1e-12)


def test_select_patches_threshold(slides):
    with open_slide(slides.generic) as r:
        geom = plan_geometry(r, 0.5, 128, 0)
    mask = slides.scene.mask("tissue", (256, 256))
    frac = box_fractions(mask, (8.0, 8.0), grid_coords(geom), 128)
    for t in (0.0, 0.25, 0.9):
        kept = select_patches(geom, mask, (8.0, 8.0), t)
        assert len(kept) == ((frac > 0).sum() if t == 0 else (frac >= t).sum())
    assert 0 < len(select_patches(geom, mask, (8.0, 8.0), 0.9)) < len(select_patches(geom, mask, (8.0, 8.0), 0.25))


def test_polygon_fractions_match_scene(slides):
    coords = np.array([[x, y] for y in range(0, 1920, 128) for x in range(0, 1920, 128)])
    frac = polygon_fractions(slides.scene.tumour, coords, 128, (2048, 2048))
    truth = box_fractions(rasterize(slides.scene.tumour, (2048, 2048), (1.0, 1.0)), (1.0, 1.0), coords, 128)
    np.testing.assert_allclose(frac, truth, atol=0.05)  # 16 raster px per patch side
    assert frac.max() > 0.9


def test_bad_geometry(slides):
    with open_slide(slides.generic) as r:
        with pytest.raises(ConfigError, match="overlap"):
            plan_geometry(r, 0.5, 256, 256)
        with pytest.raises(ConfigError, match="target_mpp"):
            plan_geometry(r, 0.0, 256, 0)
