"""Heatmap geometry and rendering, independent of any model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from milkit.data.feature_files import read_feature_file
from milkit.errors import ConfigError
from milkit.inference.export import top_bottom
from milkit.inference.heatmap import paint_boxes, rank_normalise, render_heatmap
from milkit.wsi.readers import SlideReader, open_slide


def test_paint_boxes_covers_exactly_the_pixels_whose_centres_are_inside() -> None:
    # scale 4: the box [8, 24) x [16, 32) covers pixel centres 2.5..5.5 → columns 2..5, rows 4..7
    values, covered = paint_boxes(np.array([[8, 16]]), 16, np.array([0.7]), (10, 12), (4.0, 4.0))
    want = np.zeros((10, 12), bool)
    want[4:8, 2:6] = True
    np.testing.assert_array_equal(covered, want)
    np.testing.assert_allclose(values[want], 0.7, rtol=1e-6)
    assert (values[~want] == 0).all()


def test_paint_boxes_averages_overlaps_and_never_drops_a_small_box() -> None:
    values, covered = paint_boxes(np.array([[0, 0], [8, 0], [40, 40]]), 16, np.array([0.0, 1.0, 0.25]),
                                  (16, 16), (4.0, 4.0))
    np.testing.assert_allclose(values[0, :2], 0.0)   # only the first box
    np.testing.assert_allclose(values[0, 2:4], 0.5)  # both
    np.testing.assert_allclose(values[0, 4:6], 1.0)  # only the second
    tiny, cov = paint_boxes(np.array([[41, 41]]), 1, np.array([0.9]), (16, 16), (4.0, 4.0))
    assert cov.sum() == 1 and tiny[cov][0] == pytest.approx(0.9)  # sub-pixel patch still shows


def test_rank_normalise_and_top_bottom() -> None:
    np.testing.assert_allclose(rank_normalise(np.array([3.0, -1.0, 2.0, 2.0])), [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(rank_normalise(np.array([5.0])), [1.0])
    top, bottom = top_bottom(np.array([0.1, 0.9, 0.5, 0.3, 0.7]), 2)
    assert top.tolist() == [1, 4] and bottom.tolist() == [0, 3]
    top, bottom = top_bottom(np.array([0.1, 0.9, 0.5]), 2)
    assert top.tolist() == [1, 2] and bottom.tolist() == [0]  # no patch shown twice


def test_render_puts_planted_scores_on_the_planted_region(planted) -> None:
    ff = read_feature_file(planted.features / "planted.h5")
    scores = ff.instance_labels + np.linspace(0, 0.1, len(ff.instance_labels))  # tumour patches highest
    with open_slide(planted.slide) as reader:
        hm = render_heatmap(reader, ff.coords, 64, scores, max_size=256, alpha=0.6, tissue_only=False)
        thumb, _ = reader.thumbnail(hm.mpp)
        plain = render_heatmap(reader, ff.coords, 64, scores, max_size=256, alpha=0.0)
    assert max(hm.image.shape[:2]) == 256 and hm.scale == pytest.approx((2048 / 256, 1536 / 192))
    tumour = planted.scene.mask("tumour", hm.values.shape)
    n_top = ff.instance_labels.sum()
    threshold = 1 - n_top / len(scores)  # rank of the lowest tumour patch
    assert hm.values[tumour & hm.shown].mean() > threshold and hm.values[~tumour & hm.shown].mean() < 0.5
    np.testing.assert_array_equal(hm.image[~hm.shown], thumb[~hm.shown])  # nothing drawn off the patches
    assert not np.array_equal(hm.image[hm.shown], thumb[hm.shown])
    np.testing.assert_array_equal(plain.image, thumb)  # opacity 0 leaves the thumbnail


def test_render_rejects_bad_options(planted) -> None:
    with open_slide(planted.slide) as reader:
        with pytest.raises(ConfigError, match="alpha=1.5"):
            render_heatmap(reader, np.zeros((1, 2)), 64, np.ones(1), alpha=1.5)
        with pytest.raises(ConfigError, match="not a matplotlib colour map"):
            render_heatmap(reader, np.zeros((1, 2)), 64, np.ones(1), cmap="nope")


class _HugeBlankSlide(SlideReader):
    """A 100k x 100k px slide (4x pyramid) that exists only as a reader; records the largest read."""

    name = "huge"

    def __init__(self, path: Path) -> None:
        path.write_bytes(b"placeholder")  # readers check that the file exists; pixels come from read_region
        super().__init__(path, mpp=0.25)
        self.level_dimensions = tuple((100_000 // 4 ** i, 100_000 // 4 ** i) for i in range(5))
        self.level_downsamples = tuple(float(4 ** i) for i in range(5))
        self.properties = {}
        self.largest_read = 0

    def read_region(self, location, level, size):
        self.largest_read = max(self.largest_read, size[0] * size[1])
        return np.full((size[1], size[0], 3), 230, np.uint8)


def test_rendering_a_100k_slide_stays_small(tmp_path: Path) -> None:
    import tracemalloc

    reader = _HugeBlankSlide(tmp_path / "huge.tiff")
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 99_488, (20_000, 2))
    tracemalloc.start()
    hm = render_heatmap(reader, coords, 512, rng.random(20_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert max(hm.image.shape[:2]) == 2048 and hm.scale == pytest.approx((100_000 / 2048,) * 2)
    assert reader.largest_read <= 4096 * 4096  # chunked reads, never a whole level
    assert peak < 400e6  # numpy allocations; a level-0 RGB canvas would be 30 GB
