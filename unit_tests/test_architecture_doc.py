"""docs/architecture.md stays true to the code: the names it lists exist, and nothing points to a missing page."""
from __future__ import annotations

import re
from pathlib import Path

from milkit.models import _META_DEFAULTS
from milkit.wsi.h5 import COORD_ATTRS, FEATURE_ATTRS

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_path_the_page_names_exists() -> None:
    paths = set(re.findall(r"`((?:milkit|scripts|unit_tests|docs)/[\w./<>-]*?)`", DOC))
    concrete = {p.rstrip("/") for p in paths if "<" not in p}
    assert len(concrete) > 20
    assert [p for p in sorted(concrete) if not (ROOT / p).exists()] == []


def test_the_schema_and_metadata_it_lists_are_the_codes() -> None:
    for name in (*COORD_ATTRS, *FEATURE_ATTRS, *_META_DEFAULTS):
        assert f"`{name}`" in DOC, name


def test_no_module_points_to_a_design_file_outside_the_project() -> None:
    files = [*ROOT.glob("milkit/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    assert [str(f) for f in files if "DESIGN.md" in f.read_text()] == []
