from __future__ import annotations

from pathlib import Path

import pytest

from milkit.wsi.synthetic import make_scene, write_synthetic_slide


@pytest.fixture(scope="session")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024² generic TIFF at 0.5 µm/px with tissue and tumour."""
    return write_synthetic_slide(tmp_path_factory.mktemp("feat") / "s.tiff", make_scene(1024, 1024, seed=2), mpp=0.5)
