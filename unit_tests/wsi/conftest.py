"""Small generated slides shared by the WSI tests (built once per session, a few seconds in total)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import tifffile

from milkit.wsi.synthetic import (SyntheticScene, make_scene, write_synthetic_image, write_synthetic_slide)


@dataclass
class Slides:
    root: Path
    scene: SyntheticScene          # drawn in generic.tiff (0.5 µm/px) and aperio.svs (0.25 µm/px)
    generic: Path
    aperio: Path
    no_mpp: Path
    blank: Path                    # background only
    png: Path                      # plain image, 2 µm/px from its dpi
    tif: Path                      # stripped (non-tiled) TIFF, 2 µm/px from resolution tags
    jpg_no_dpi: Path
    small_scene: SyntheticScene    # drawn in the plain images


def undecodable_copy(src: Path, dst: Path) -> Path:
    """A copy whose every tile is zeroed: the TIFF structure opens, no tile decodes."""
    dst.write_bytes(src.read_bytes())
    with tifffile.TiffFile(dst) as tif:
        segments = [(o, c) for page in tif.pages for o, c in zip(page.dataoffsets, page.databytecounts)]
    with dst.open("r+b") as fh:
        for offset, count in segments:
            fh.seek(offset)
            fh.write(b"\0" * count)
    return dst


@pytest.fixture(scope="session")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Slides:
    root = tmp_path_factory.mktemp("slides")
    scene = make_scene(2048, 2048, n_tissue=3, n_tumour=1, hole=True, seed=0)
    small = make_scene(512, 384, n_tissue=2, n_tumour=1, seed=3)
    return Slides(
        root=root, scene=scene,
        generic=write_synthetic_slide(root / "generic.tiff", scene, mpp=0.5),
        aperio=write_synthetic_slide(root / "aperio.svs", scene, mpp=0.25, flavour="aperio"),
        no_mpp=write_synthetic_slide(root / "no_mpp.tiff", scene, flavour="no_mpp"),
        blank=write_synthetic_slide(root / "blank.tiff", SyntheticScene(1024, 1024), mpp=0.5),
        png=write_synthetic_image(root / "plain.png", small, mpp=2.0),
        tif=write_synthetic_image(root / "plain.tif", small, mpp=2.0),
        jpg_no_dpi=write_synthetic_image(root / "plain.jpg", small, mpp=None),
        small_scene=small,
    )
