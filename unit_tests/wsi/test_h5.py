from __future__ import annotations

import h5py
import numpy as np
import pytest

from milkit.errors import DataError
from milkit.wsi.h5 import COORD_ATTRS, feature_writer, read_coords, validate_coords, validate_features, write_coords

ATTRS = {k: 1 for k in COORD_ATTRS if k != "milkit_version"} | {"name": "s1", "segmenter": "{}", "target_mpp": 0.5}
FEAT_ATTRS = {"encoder": "tiny", "weights_hash": "random:0", "input_size": 64, "precision": "fp32",
              "mean": [0.5] * 3, "std": [0.2] * 3}


def test_coords_round_trip_and_validation(tmp_path):
    coords = np.array([[0, 0], [512, 0], [0, 512]])
    path = write_coords(tmp_path / "s1_patches.h5", coords, ATTRS)
    got, attrs = read_coords(path)
    assert got.dtype == np.int64 and (got == coords).all()
    assert attrs["name"] == "s1" and attrs["milkit_version"]
    assert (validate_coords(path, {"target_mpp": 0.5, "name": "s1"}) == coords).all()
    with pytest.raises(DataError, match="target_mpp=.*expected 0.25"):
        validate_coords(path, {"target_mpp": 0.25})
    with h5py.File(path, "a") as f:
        del f["coords"].attrs["patch_size_level0"]
    with pytest.raises(DataError, match="missing attributes patch_size_level0"):
        validate_coords(path)
    (tmp_path / "junk_patches.h5").write_bytes(b"\x89HDF\r\n truncated")
    with pytest.raises(DataError, match="junk_patches.h5: unreadable HDF5"):
        validate_coords(tmp_path / "junk_patches.h5")


def test_feature_writer_atomic_and_complete(tmp_path):
    coords = np.arange(10).reshape(5, 2)
    out = tmp_path / "s1.h5"
    feats = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, 1, -1, 0, 1])
    with feature_writer(out, coords, ATTRS, 3, FEAT_ATTRS, instance_labels=labels, label_attrs={"src": "x"}) as w:
        w.write(feats[:2])
        assert not out.exists()  # only the temporary file exists while writing
        w.write(feats[2:])
    assert validate_features(out, coords, 3, {"encoder": "tiny"}, labels=True) == 5
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["features"][()], feats)
        np.testing.assert_array_equal(f["instance_labels"][()], labels)
        assert f["coords"].attrs["name"] == "s1" and f["features"].attrs["dim"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["s1.h5"]

    with pytest.raises(DataError, match="wrote 2 feature rows for 5"):
        with feature_writer(tmp_path / "s2.h5", coords, ATTRS, 3, FEAT_ATTRS) as w:
            w.write(feats[:2])
    with pytest.raises(DataError, match="more feature rows"):
        with feature_writer(tmp_path / "s3.h5", coords, ATTRS, 3, FEAT_ATTRS) as w:
            w.write(np.zeros((6, 3)))
    assert [p.name for p in tmp_path.iterdir()] == ["s1.h5"]  # no partial outputs, no temporaries


def test_validate_features_catches_mismatches(tmp_path):
    coords = np.arange(8).reshape(4, 2)
    out = tmp_path / "s.h5"
    with feature_writer(out, coords, ATTRS, 2, FEAT_ATTRS, dtype="float16") as w:
        w.write(np.ones((4, 2)))
    with h5py.File(out) as f:
        assert f["features"].dtype == np.float16
    for kwargs, match in [
        ({"dim": 3}, "feature dim 2, expected 3"),
        ({"coords": coords + 1}, "coords differ"),
        ({"expected": {"weights_hash": "sha256:ab"}}, "weights_hash="),
        ({"labels": True}, "instance_labels missing"),
    ]:
        with pytest.raises(DataError, match=match):
            validate_features(out, **kwargs)
    with h5py.File(out, "a") as f:
        del f["coords"]
        f["coords"] = np.zeros((3, 2), np.int64)
    with pytest.raises(DataError, match="4 feature rows but 3 coords"):
        validate_features(out)
    with pytest.raises(DataError, match="unreadable"):
        validate_features(tmp_path / "none.h5")
