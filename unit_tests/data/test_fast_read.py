"""Whole-dataset reads of row-chunked HDF5 files (CLAM / TRIDENT layout) and the float32 + finiteness check."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from milkit.data.fast_read import _chunk_runs, read_dataset, to_float32_checked_finite
from milkit.data.feature_files import read_feature_file
from milkit.errors import DataError


def _clam_style(path: Path, feats: np.ndarray, batch: int) -> None:
    """Append ``batch`` rows at a time to features and coords alternately, as CLAM's ``save_hdf5(mode='a')`` does."""
    coords = np.arange(2 * len(feats), dtype=np.int64).reshape(-1, 2)
    for start in range(0, len(feats), batch):
        with h5py.File(path, "a") as f:
            for key, val in (("features", feats[start:start + batch]), ("coords", coords[start:start + batch])):
                if key not in f:
                    f.create_dataset(key, data=val, chunks=(1,) + val.shape[1:], maxshape=(None,) + val.shape[1:])
                else:
                    f[key].resize(len(f[key]) + len(val), axis=0)
                    f[key][-len(val):] = val


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_row_chunked_appended_file_reads_exactly(tmp_path: Path, dtype) -> None:
    feats = np.random.default_rng(0).standard_normal((700, 48)).astype(dtype)
    _clam_style(tmp_path / "s.h5", feats, batch=64)
    with h5py.File(tmp_path / "s.h5") as f:
        runs = _chunk_runs(f["features"])
        assert runs is not None and len(runs) > 1  # interleaved with coords: several back-to-back runs
        assert sum(n for _, n, _ in runs) == 700 and [r for r, _, _ in runs] == sorted(r for r, _, _ in runs)
        out = read_dataset(f["features"])
        assert out.dtype == dtype and np.array_equal(out, feats)
        assert np.array_equal(read_dataset(f["coords"]), np.arange(1400).reshape(-1, 2))


@pytest.mark.parametrize("kwargs, fast", [
    ({"chunks": (64, 16)}, True),                          # several rows per chunk, the last one partial
    ({"chunks": (1, 16), "compression": "gzip"}, False),   # filters: h5py decodes
    ({"chunks": (8, 4)}, False),                           # chunks split rows
    ({}, False),                                           # contiguous layout: one h5py read already
])
def test_other_layouts_read_exactly(tmp_path: Path, kwargs: dict, fast: bool) -> None:
    data = np.random.default_rng(1).standard_normal((203, 16)).astype(np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("features", data=data, **kwargs)
    with h5py.File(tmp_path / "s.h5") as f:
        assert (_chunk_runs(f["features"]) is not None) == fast
        assert np.array_equal(read_dataset(f["features"]), data)


def test_float32_conversion_and_bad_row_count() -> None:
    x = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float16)
    out, bad = to_float32_checked_finite(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous and bad == 0 and np.array_equal(out, x.astype(np.float32))
    x[[3, 7], [0, 5]] = [np.nan, np.inf]
    x[7, 1] = -np.inf
    assert to_float32_checked_finite(x)[1] == 2
    huge = np.full((4, 3), 3e38, dtype=np.float32)  # finite values whose sum overflows: still 0 bad rows
    assert to_float32_checked_finite(huge)[1] == 0


def test_nan_rows_and_truncated_files_are_data_errors(tmp_path: Path) -> None:
    feats = np.ones((300, 8), dtype=np.float16)
    feats[10, 2] = np.nan
    _clam_style(tmp_path / "nan.h5", feats, batch=100)
    with pytest.raises(DataError, match=r"nan.h5: features contain NaN or inf in 1 of 300 rows"):
        read_feature_file(tmp_path / "nan.h5")
    _clam_style(tmp_path / "ok.h5", np.ones((300, 8), dtype=np.float32), batch=300)
    data = (tmp_path / "ok.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.h5: cannot read feature file"):
        read_feature_file(tmp_path / "cut.h5")
