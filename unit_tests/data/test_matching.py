"""Slide-id matching on file names as they occur: TCGA barcode + UUID, CAMELYON ``.tif.h5``, CLAM ``pt_files``."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from milkit.data.matching import bag_table, case_ids, match_slides, resolve_cohort_csv
from milkit.data.sources import FeatureDirSource
from milkit.errors import DataError
from unit_tests.data.test_feature_files import write_h5

LUAD = "TCGA-05-4244-01Z-00-DX1"
UUID = "d4ff32cd-38cf-40ea-8213-45c2b100ac01"


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def test_exact_then_extension_then_tcga_barcode(tmp_path: Path) -> None:
    touch(tmp_path, f"{LUAD}.{UUID}.h5", "tumor_001.tif.h5", "normal_002.h5", "TCGA-AA-3CAB-01Z-00-DX10.ab.h5",
          "stray.h5")
    ids = ["normal_002", "tumor_001", LUAD, "TCGA-AA-3CAB-01Z-00-DX1", "tumor_999"]
    rep = match_slides(ids, tmp_path)
    assert rep.files == {"normal_002": [tmp_path / "normal_002.h5"], "tumor_001": [tmp_path / "tumor_001.tif.h5"],
                         LUAD: [tmp_path / f"{LUAD}.{UUID}.h5"]}
    assert rep.rule_counts == {"exact": 1, "extension": 1, "tcga": 1}
    # DX1 is not a prefix of DX10: barcodes match at '-' / '.' boundaries only
    assert rep.missing == ["TCGA-AA-3CAB-01Z-00-DX1", "tumor_999"]
    assert sorted(p.name for p in rep.extra) == ["TCGA-AA-3CAB-01Z-00-DX10.ab.h5", "stray.h5"]
    assert rep.summary() == ("feature files: 3 of 5 table ids matched 3 files (exact 1, extension 1, tcga 1); "
                             "2 missing (first: TCGA-AA-3CAB-01Z-00-DX1, tumor_999); 2 extra files not in the table")


def test_table_ids_with_uuid_and_slide_extension(tmp_path: Path) -> None:
    """MambaMIL lists ``<barcode>.<uuid>.svs``; DSMIL-style folders hold ``<barcode>.h5``."""
    touch(tmp_path, f"{LUAD}.{UUID}.h5", "TCGA-05-4245-01Z-00-DX1.h5")
    rep = match_slides([f"{LUAD}.{UUID}.svs", "TCGA-05-4245-01Z-00-DX1.36ff5403.svs"], tmp_path)
    assert rep.rule_counts == {"exact": 0, "extension": 1, "tcga": 1} and not rep.missing and not rep.extra


def test_case_barcode_expands_to_every_slide_of_the_case(tmp_path: Path) -> None:
    touch(tmp_path, "TCGA-3C-AALI-01Z-00-DX1.AA.h5", "TCGA-3C-AALI-01Z-00-DX2.BB.h5", "TCGA-3C-AALJ-01Z-00-DX1.CC.h5")
    table = pd.DataFrame({"slide_id": ["TCGA-3C-AALI", "TCGA-3C-AALJ"], "case_id": ["TCGA-3C-AALI", "TCGA-3C-AALJ"],
                          "label": ["IDC", "ILC"]})
    bags = bag_table(table, match_slides(table["slide_id"], tmp_path))
    assert list(bags["bag_id"]) == ["TCGA-3C-AALI-01Z-00-DX1.AA", "TCGA-3C-AALI-01Z-00-DX2.BB", "TCGA-3C-AALJ"]
    assert list(bags["case_id"]) == ["TCGA-3C-AALI", "TCGA-3C-AALI", "TCGA-3C-AALJ"]
    assert list(bags["label"]) == ["IDC", "IDC", "ILC"]


def test_ambiguous_slide_barcode_and_file_claimed_twice(tmp_path: Path) -> None:
    touch(tmp_path, f"{LUAD}.AA.h5", f"{LUAD}.BB.h5")
    with pytest.raises(DataError, match=rf"slide '{LUAD}' matches 2 feature files"):
        match_slides([LUAD], tmp_path)
    table = pd.DataFrame({"slide_id": ["TCGA-05-4244", f"{LUAD}.AA"]})
    with pytest.raises(DataError, match=r"t.csv: feature file .*DX1.AA.h5 is matched by two table rows"):
        bag_table(table, match_slides(table["slide_id"], tmp_path), "t.csv")


def test_clam_pt_files_and_h5_files(tmp_path: Path) -> None:
    """CLAM writes ``h5_files/<id>.h5`` and ``pt_files/<id>.pt``: the .h5 wins, a .pt-only slide is found too."""
    touch(tmp_path / "h5_files", "tumor_001.h5")
    touch(tmp_path / "pt_files", "tumor_001.pt", "normal_001.pt")
    rep = match_slides(["tumor_001", "normal_001"], tmp_path)
    assert rep.files == {"tumor_001": [tmp_path / "h5_files" / "tumor_001.h5"],
                         "normal_001": [tmp_path / "pt_files" / "normal_001.pt"]}
    assert rep.extra == []  # pt_files/tumor_001.pt is the same slide as h5_files/tumor_001.h5, not an extra file


def test_strict_lists_the_first_missing_ids_and_nothing_matched_fails(tmp_path: Path) -> None:
    touch(tmp_path, "a.h5")
    with pytest.raises(DataError, match=r"c.csv: 6 slide\(s\) have no feature file in .*: b0, b1, b2, b3, b4 \.\.\. "
                                        r"\(data.source.strict=true\)"):
        match_slides(["a"] + [f"b{i}" for i in range(6)], tmp_path, strict=True, where="c.csv")
    with pytest.raises(DataError, match=r"c.csv: none of its 2 slides has a feature file in .* \(first: x, y;"):
        match_slides(["x", "y"], tmp_path, where="c.csv")


def test_case_ids_default_to_the_tcga_patient() -> None:
    assert case_ids([f"{LUAD}.{UUID}", "TCGA-3C-AALI", "tumor_001"]) == ["TCGA-05-4244", "TCGA-3C-AALI", "tumor_001"]


def test_feature_dir_source_on_tcga_files_without_case_column(tmp_path: Path) -> None:
    fdir = tmp_path / "features"
    fdir.mkdir()
    slides = [f"TCGA-05-424{i}-01Z-00-DX1" for i in range(4)]
    for i, s in enumerate(slides):
        write_h5(fdir / f"{s}.{UUID}.h5", d=6)
    torch.save(torch.randn(5, 6), fdir / "unrelated.pt")
    pd.DataFrame({"slide_id": slides, "label": ["LUAD", "LUSC"] * 2}).to_csv(tmp_path / "t.csv", index=False)
    src = FeatureDirSource(fdir, tmp_path / "t.csv", exclude=[slides[3]])
    assert list(src.records["bag_id"]) == slides[:3]
    assert list(src.records["case_id"]) == [s[:12] for s in slides[:3]]
    assert src.path(slides[0]).name == f"{slides[0]}.{UUID}.h5" and src.load(slides[1]).label == 1
    assert src.describe_files().endswith("3 of 3 table ids matched 3 files (tcga 3); 0 missing; "
                                         "2 extra files not in the table")


def test_packaged_cohorts_resolve_from_any_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = resolve_cohort_csv("camelyon16")
    assert path.is_absolute() and path.name == "camelyon16.csv" and path.is_file()
    assert resolve_cohort_csv("mine.csv") == Path("mine.csv")  # a path stays a path
    with pytest.raises(DataError, match=r"camelyon61: cohort CSV not found \(neither a file nor a packaged cohort: "
                                        r"camelyon16, tcga_blca_os"):
        resolve_cohort_csv("camelyon61")
