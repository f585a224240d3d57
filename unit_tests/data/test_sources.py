"""Bag sources: feature directories with a cohort CSV, classic MIL sets, synthetic bags."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import pandas as pd
import pytest
import torch

from milkit.data.classic import ClassicMILSource
from milkit.data.sources import FeatureDirSource
from milkit.data.synthetic import SyntheticSource
from milkit.data.synthetic_survival import SyntheticSurvivalSource
from milkit.errors import ConfigError, DataError
from unit_tests.data.test_feature_files import write_h5


def make_cohort(tmp_path: Path, n: int = 6, d: int = 8, labels=("normal", "tumor")) -> tuple[Path, Path]:
    fdir = tmp_path / "features"
    fdir.mkdir()
    rows = []
    for i in range(n):
        write_h5(fdir / f"s{i}.h5", n=5 + i, d=d)
        rows.append({"slide_id": f"s{i}", "case_id": f"p{i // 2}", "label": labels[(i // 2) % len(labels)]})
    csv = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return fdir, csv


def test_feature_dir_source_loads_bags(tmp_path: Path) -> None:
    fdir, csv = make_cohort(tmp_path)
    src = FeatureDirSource(fdir, csv, label_map={"normal": 0, "tumor": 1}, cache=True)
    assert src.in_dim == 8 and src.num_classes == 2 and src.class_names == ["normal", "tumor"]
    assert list(src.records["case_id"]) == ["p0", "p0", "p1", "p1", "p2", "p2"]
    bag = src.load("s3")
    assert bag.label == 1 and bag.features.shape == (8, 8) and bag.coords.shape == (8, 2)
    assert src.load("s3") is bag  # cached
    assert src.feature_meta()["encoder"] == "resnet50_trunc"


def test_missing_feature_file(tmp_path: Path) -> None:
    """A slide without a file is reported and left out; ``strict`` makes it an error listing the ids."""
    fdir, csv = make_cohort(tmp_path)
    (fdir / "s4.h5").unlink()
    src = FeatureDirSource(fdir, csv)
    assert list(src.records["bag_id"]) == ["s0", "s1", "s2", "s3", "s5"]
    assert "5 of 6 table ids matched 5 files (exact 5); 1 missing (first: s4); 0 extra" in src.describe_files()
    with pytest.raises(DataError, match=r"cohort.csv: 1 slide\(s\) have no feature file in .*features: s4 \(data.source.strict=true\)"):
        FeatureDirSource(fdir, csv, strict=True)


def test_label_not_in_label_map(tmp_path: Path) -> None:
    fdir, csv = make_cohort(tmp_path)
    with pytest.raises(DataError, match=r"cohort.csv row 4: label 'tumor' is not in the label map \(known: normal, benign\)"):
        FeatureDirSource(fdir, csv, label_map=["normal", "benign"])


def test_inconsistent_dims(tmp_path: Path) -> None:
    fdir, csv = make_cohort(tmp_path)
    write_h5(fdir / "s2.h5", d=5)
    with pytest.raises(DataError, match="feature files disagree on D"):
        FeatureDirSource(fdir, csv)


@pytest.mark.parametrize("bad, cause", [
    (lambda p: write_h5(p, features=np.full((4, 8), np.nan, np.float32)), "features contain NaN or inf in 4 of 4 rows"),
    (lambda p: write_h5(p, n=6, coords_rows=5), "'coords' has 5 rows but 'features' has 6"),
    (lambda p: write_h5(p, n=0), "empty bag"),
])
def test_bad_feature_files_fail_before_training(tmp_path: Path, bad, cause) -> None:
    fdir, csv = make_cohort(tmp_path)
    bad(fdir / "s3.h5")
    with pytest.raises(DataError, match=f"s3.h5: {re.escape(cause)}"):
        FeatureDirSource(fdir, csv)
    src = FeatureDirSource(fdir, csv, validate=False)  # opt-out: found when the bag is loaded
    with pytest.raises(DataError, match="s3.h5"):
        src.load("s3")


def test_clam_layouts_are_found_and_read(tmp_path: Path) -> None:
    """CLAM writes h5_files/<id>.h5 (features (N, D) or (1, N, D), no attributes) and pt_files/<id>.pt."""
    fdir, csv = make_cohort(tmp_path, n=4)
    for i in range(4):
        (fdir / f"s{i}.h5").unlink()
    (fdir / "h5_files").mkdir()
    (fdir / "pt_files").mkdir()
    feats = np.random.default_rng(0).standard_normal((7, 8)).astype(np.float32)
    write_h5(fdir / "h5_files" / "s0.h5", features=feats[None], attrs=False, coords=False)
    write_h5(fdir / "h5_files" / "s1.h5", n=3, attrs=False)
    torch.save(torch.from_numpy(feats), fdir / "pt_files" / "s2.pt")
    torch.save(torch.from_numpy(feats[:2]), fdir / "pt_files" / "s3.pt")
    src = FeatureDirSource(fdir, csv)
    assert src.in_dim == 8 and src.path("s0").parent.name == "h5_files" and src.path("s2").suffix == ".pt"
    np.testing.assert_array_equal(src.load("s0").features.numpy(), feats)  # (1, N, D) squeezed
    np.testing.assert_array_equal(src.load("s2").features.numpy(), feats)
    assert src.load("s1").coords.shape == (3, 2) and src.load("s0").coords is None


def test_classic_datasets() -> None:
    expected = {"musk1": (92, 166, 47), "musk2": (102, 166, 39), "elephant": (200, 230, 100),
                "ucsb_breast_cancer": (58, 708, 26)}
    for name, (n_bags, dim, n_pos) in expected.items():
        src = ClassicMILSource(name)
        assert (len(src.records), src.in_dim, int(src.records["label"].sum())) == (n_bags, dim, n_pos)
    assert len(ClassicMILSource("ucsb_breast_cancer").load("ucsb_breast_cancer_1")) > 0
    with pytest.raises(DataError, match="unknown classic MIL dataset 'fox'"):
        ClassicMILSource("fox")


def test_synthetic_source_has_instance_labels() -> None:
    src = SyntheticSource(n_bags=12, in_dim=6, num_classes=3, witness_rate=0.25, bags_per_case=2)
    assert src.records["case_id"].nunique() == 6
    for bag_id in src.records["bag_id"]:
        bag = src.load(bag_id)
        assert set(bag.instance_labels.unique().tolist()) == ({0} if bag.label == 0 else {0, bag.label})
    pos = src.load(src.records.query("label == 1")["bag_id"].iloc[0])
    assert torch.equal(pos.instance_labels > 0, pos.instance_labels == 1)


@pytest.mark.parametrize("make", [lambda **kw: SyntheticSource(n_bags=4, **kw),
                                  lambda **kw: SyntheticSurvivalSource(n_patients=4, **kw)])
@pytest.mark.parametrize("sizes", [{"min_size": 30, "max_size": 16}, {"min_size": 0, "max_size": 4}])
def test_synthetic_bag_sizes_out_of_order_are_one_config_error(make, sizes: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=f"min_size={sizes['min_size']}, max_size={sizes['max_size']}$"):
        make(**sizes)
