from __future__ import annotations

import pytest

from milkit.errors import DataError
from milkit.wsi.mpp import require_mpp, resolve_mpp
from milkit.wsi.readers import open_slide

pytestmark = pytest.mark.wsi  # needs OpenSlide and generated slides


@pytest.mark.parametrize("props, res, mpp, source", [
    ({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.27", "aperio.MPP": "9"}, None, 0.26, "openslide"),
    ({"aperio.MPP": "0.2527"}, None, 0.2527, "vendor:aperio.MPP"),
    ({"philips.DICOM_PIXEL_SPACING": '"0.000227" "0.000227"'}, None, 0.227, "vendor:philips.DICOM_PIXEL_SPACING"),
    ({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}, None, 0.25, "tiff"),
    ({}, (50800, "inch"), 0.5, "tiff"),
])
def test_chain_sources(props, res, mpp, source):
    out = resolve_mpp(props, res)
    assert out.source == source
    assert out.mpp == pytest.approx(mpp)


def test_chain_order_override_and_implausible():
    # a 72-dpi screen default is not a microscope resolution: skipped, then the override is used
    out = resolve_mpp({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}, override=0.5)
    assert (out.mpp, out.source) == (0.5, "override") and "implausible" in out.tried[0]
    # the override is only a fallback unless forced
    assert resolve_mpp({"openslide.mpp-x": "0.25"}, override=0.5).mpp == 0.25
    assert resolve_mpp({"openslide.mpp-x": "0.25"}, override=0.5, force=True).mpp == 0.5
    # a unitless resolution is no resolution
    assert resolve_mpp({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"}).mpp is None


def test_missing_mpp_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"slide\.svs: no microns-per-pixel.*slide_mpp") as err:
        require_mpp(resolve_mpp({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}), tmp_path / "slide.svs")
    assert "\n" not in str(err.value) and "implausible" in str(err.value)


def test_mpp_from_files(slides):
    cases = [(slides.generic, "openslide", 0.5, "openslide"), (slides.aperio, "openslide", 0.25, "openslide"),
             (slides.png, "image", 2.0, "tiff"), (slides.tif, "image", 2.0, "tiff")]
    for path, reader, mpp, source in cases:
        with open_slide(path) as r:
            assert (r.name, r.mpp_result.source) == (reader, source), path
            assert r.mpp == pytest.approx(mpp)
    with open_slide(slides.aperio) as r:
        assert r.objective_power == 40 and r.properties["openslide.vendor"] == "aperio"
    for path in (slides.no_mpp, slides.jpg_no_dpi):
        with open_slide(path) as r, pytest.raises(DataError, match="no microns-per-pixel"):
            _ = r.mpp
        with open_slide(path, mpp=0.5) as r:
            assert (r.mpp, r.mpp_result.source) == (0.5, "override")
