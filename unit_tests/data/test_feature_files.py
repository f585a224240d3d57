"""Reading milkit / TRIDENT / CLAM feature files, and the one-line errors for bad files."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from milkit.data.feature_files import feature_file_meta, read_feature_file
from milkit.errors import DataError

RNG = np.random.default_rng(0)


def write_h5(path: Path, n: int = 12, d: int = 8, coords: bool = True, attrs: bool = True, inst: bool = False,
             features: np.ndarray | None = None, coords_rows: int | None = None) -> np.ndarray:
    feats = RNG.standard_normal((n, d)).astype(np.float32) if features is None else features
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features", data=feats)
        if coords:
            c = f.create_dataset("coords", data=np.arange(2 * (coords_rows or n), dtype=np.int64).reshape(-1, 2) * 256)
            if attrs:
                c.attrs.update({"patch_size": 256, "patch_size_level0": 512, "target_mpp": 0.5, "level0_mpp": 0.25})
        if attrs:
            ds.attrs.update({"encoder": "resnet50_trunc", "precision": "float32"})
        if inst:
            f.create_dataset("instance_labels", data=(np.arange(n) % 2).astype(np.int64))
    return feats


def test_milkit_h5_round_trip(tmp_path: Path) -> None:
    feats = write_h5(tmp_path / "s.h5", inst=True)
    ff = read_feature_file(tmp_path / "s.h5")
    np.testing.assert_array_equal(ff.features, feats)
    assert ff.coords.dtype == np.int64 and ff.coords.shape == (12, 2) and ff.coords[1, 0] == 512
    np.testing.assert_array_equal(ff.instance_labels, np.arange(12) % 2)
    assert ff.attrs["encoder"] == "resnet50_trunc" and ff.attrs["patch_size_level0"] == 512
    assert feature_file_meta(tmp_path / "s.h5") == {"num_instances": 12, "dim": 8, "attrs": ff.attrs}


def test_trident_file_float16_features(tmp_path: Path) -> None:
    feats = RNG.standard_normal((5, 4)).astype(np.float16)
    write_h5(tmp_path / "t.h5", n=5, d=4, features=feats)
    ff = read_feature_file(tmp_path / "t.h5")
    assert ff.features.dtype == np.float32
    np.testing.assert_allclose(ff.features, feats.astype(np.float32))


def test_clam_h5_without_attributes(tmp_path: Path) -> None:
    feats = write_h5(tmp_path / "c.h5", attrs=False)
    ff = read_feature_file(tmp_path / "c.h5")
    np.testing.assert_array_equal(ff.features, feats)
    assert ff.attrs == {}


def test_clam_pt_tensor_and_dict(tmp_path: Path) -> None:
    x = torch.randn(7, 3)
    torch.save(x, tmp_path / "a.pt")
    torch.save({"features": x, "coords": torch.zeros(7, 2, dtype=torch.long)}, tmp_path / "b.pt")
    np.testing.assert_array_equal(read_feature_file(tmp_path / "a.pt").features, x.numpy())
    assert read_feature_file(tmp_path / "b.pt").coords.shape == (7, 2)


@pytest.mark.parametrize("case, message", [
    ("rows", "'coords' has 9 rows but 'features' has 12"),
    ("nan", "features contain NaN or inf in 2 of 12 rows"),
    ("empty", "empty bag \\(0 instances\\)"),
    ("nofeatures", "no 'features' dataset"),
    ("garbage", "cannot read feature file"),
    ("missing", "feature file not found"),
])
def test_bad_files_give_one_line_errors(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "bad.h5"
    if case == "rows":
        write_h5(path, coords_rows=9)
    elif case == "nan":
        feats = RNG.standard_normal((12, 8)).astype(np.float32)
        feats[3, 1], feats[5, 0] = np.nan, np.inf
        write_h5(path, features=feats)
    elif case == "empty":
        write_h5(path, n=0, coords=False)
    elif case == "nofeatures":
        with h5py.File(path, "w") as f:
            f.create_dataset("coords", data=np.zeros((3, 2)))
    elif case == "garbage":
        path.write_text("not an hdf5 file")
    with pytest.raises(DataError, match=message) as err:
        read_feature_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
