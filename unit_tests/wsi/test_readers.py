from __future__ import annotations

import numpy as np
import pytest

import milkit.wsi.readers as readers
from milkit.errors import DataError
from milkit.wsi.readers import ImageReader, OpenSlideReader, open_slide
from milkit.wsi.synthetic import SyntheticScene, write_synthetic_slide

pytestmark = pytest.mark.wsi  # needs OpenSlide and generated slides


def test_format_detection(slides):
    assert isinstance(open_slide(slides.generic), OpenSlideReader)
    assert open_slide(slides.generic).properties["openslide.vendor"] == "generic-tiff"
    assert open_slide(slides.aperio).properties["openslide.vendor"] == "aperio"
    for path in (slides.png, slides.tif, slides.jpg_no_dpi):
        assert isinstance(open_slide(path), ImageReader), path
    r = open_slide(slides.generic)
    assert r.level_dimensions == ((2048, 2048), (512, 512), (128, 128))
    assert r.level_downsamples == (1.0, 4.0, 16.0)
    assert [r.best_level(d) for d in (0.5, 1, 3.9, 4, 15, 16, 100)] == [0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("content, name, match", [
    (b"", "empty.tiff", "empty file"),
    (b"patient notes, not a slide\n", "notes.svs", "not a slide format"),
    (b"not a png", "fake.png", "cannot open as an image"),
])
def test_unreadable_files(tmp_path, content, name, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        open_slide(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_forced_reader(tmp_path, slides):
    with pytest.raises(DataError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    assert isinstance(open_slide(slides.tif, reader="image"), ImageReader)
    with pytest.raises(DataError, match="OpenSlide cannot open"):
        open_slide(slides.png, reader="openslide")


def test_read_region_matches_pixels(slides):
    """OpenSlide reads of level 0 and level 1 agree with each other and with the image reader's crops."""
    with open_slide(slides.generic) as r:
        l0 = r.read_region((512, 256), 0, (512, 512)).astype(float)
        l1 = r.read_region((512, 256), 1, (128, 128)).astype(float)
        assert l0.shape == (512, 512, 3) and l1.shape == (128, 128, 3)
        pooled = l0.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))
        assert np.abs(pooled - l1).mean() < 6  # same picture, JPEG + texture differences only
    img = open_slide(slides.png)
    full = img.read_region((0, 0), 0, img.dimensions)
    crop = img.read_region((-10, 300), 0, (40, 100))  # partly outside: white padding
    assert (crop[:, :10] == 255).all() and (crop[84:] == 255).all()
    np.testing.assert_array_equal(crop[:84, 10:], full[300:384, 0:30])
    with pytest.raises(DataError, match="one level"):
        img.read_region((0, 0), 1, (4, 4))


def test_sparse_background_reads_white(tmp_path):
    scene = SyntheticScene(1024, 512)
    path = write_synthetic_slide(tmp_path / "sparse.tiff", scene, mpp=0.5, sparse_background=True)
    with open_slide(path) as r:
        assert (r.read_region((0, 0), 0, (1024, 512)) == 255).all()


def test_thumbnail_chunked_equals_whole(slides, monkeypatch):
    with open_slide(slides.aperio) as r:
        whole, scale = r.thumbnail(2.0)
        assert whole.shape == (256, 256, 3) and scale == (8.0, 8.0)
        monkeypatch.setattr(readers, "_CHUNK", 100)  # many chunks, uneven at the borders
        chunked, _ = r.thumbnail(2.0)
        assert np.abs(chunked.astype(int) - whole).mean() < 1.0
        tiny, scale = r.thumbnail(1000.0)
        assert tiny.shape == (1, 1, 3) and scale == (2048.0, 2048.0)


@pytest.mark.parametrize("which, mpp", [("generic", 1.0), ("generic", 3.0), ("aperio", 1.0), ("aperio", 2.0)])
def test_fast_jpeg_thumbnail_matches_openslide(slides, monkeypatch, which, mpp):
    with open_slide(getattr(slides, which)) as r:
        slow, scale = readers.SlideReader.thumbnail(r, mpp)
        monkeypatch.setattr(readers, "FAST_THUMB_PIXELS", 0)
        calls = []
        monkeypatch.setattr(readers, "downscaled_level", lambda *a, **k: calls.append(1) or _fast(*a, **k))
        fast, scale_fast = r.thumbnail(mpp)
    assert calls and scale_fast == scale and fast.shape == slow.shape
    assert np.abs(fast.astype(int) - slow).mean() < 1.0


def _fast(*args, **kwargs):
    from milkit.wsi.jpegtiff import downscaled_level

    out = downscaled_level(*args, **kwargs)
    assert out is not None
    return out


def test_a_truncated_slide_is_reported_as_truncated(tmp_path, slides):
    """A pyramidal TIFF cut short (a partial copy): one line naming the file, the first offset past its end and
    the file's size, whichever part is cut (before: "not a slide format OpenSlide recognises")."""
    import tifffile

    data = slides.aperio.read_bytes()
    with tifffile.TiffFile(slides.aperio) as tif:
        pages = [(p.offset, int(max(o + c for o, c in zip(p.dataoffsets, p.databytecounts)))) for p in tif.pages]
    assert len(pages) >= 3 and isinstance(open_slide(slides.aperio), OpenSlideReader)  # the whole file is fine
    cuts = {pages[1][0] + 1: f"IFD 1 at offset {pages[1][0]}"}  # inside the second IFD's entry count
    for i, (ifd, end) in enumerate(pages):
        cuts[(ifd + end) // 2] = f"IFD {i}'s image data ends at offset {end}"  # half of the level's tiles
    for size, where in cuts.items():
        path = tmp_path / f"cut_{size}.svs"
        path.write_bytes(data[:size])
        for reader in ("auto", "openslide", "image"):
            with pytest.raises(DataError) as err:
                open_slide(path, reader)
            assert str(err.value) == f"{path}: truncated: {where} past end of file (size {size})"
