"""Coordinates and features HDF5 files (TRIDENT/CLAM compatible; schema in docs/architecture.md): I/O, validators.

Coordinates ``<slide_id>_patches.h5``: ``coords`` int64 ``(N, 2)`` level-0 top-left ``(x, y)`` with the
geometry attributes. Features ``<slide_id>.h5``: ``features`` ``(N, D)`` in ``coords`` row order, ``coords``
with the same attributes, optional ``instance_labels`` ``(N,)`` int64 (−1 = unknown). Files are written to a
temporary name and renamed, after checking that the disk has room for them (libhdf5 cannot recover from a
write that fails for lack of space: it segfaults at the next close; a second writer filling the disk in the
meantime is not covered). The validators are what a rerun uses to decide whether to redo a slide.
Bag loading for training lives in ``milkit.data``; this module only reads what extraction needs.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from milkit import __version__
from milkit.errors import DataError
from milkit.utils.io import atomic_path, require_free_space

__all__ = ["COORD_ATTRS", "FEATURE_ATTRS", "write_coords", "read_coords", "validate_coords", "feature_writer",
           "validate_features", "FeatureWriter"]

COORD_ATTRS = ("patch_size", "patch_size_level0", "target_mpp", "level0_mpp", "target_magnification", "overlap",
               "patch_level", "downsample", "level_dim", "read_level", "name", "level0_width", "level0_height",
               "segmenter", "milkit_version")
FEATURE_ATTRS = ("encoder", "weights_hash", "input_size", "precision", "mean", "std")
_HDF5_OVERHEAD = 128 << 10  # bytes of metadata, attributes and chunk index, generously


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        if value is not None:
            obj.attrs[key] = value


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    out = {}
    for key, value in obj.attrs.items():
        out[key] = value.decode() if isinstance(value, bytes) else value
    return out


def write_coords(path: str | os.PathLike, coords: np.ndarray, attrs: Mapping[str, Any]) -> Path:
    """Write ``coords`` ``(N, 2)`` with ``attrs`` (``milkit_version`` added) atomically."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        require_free_space(path, coords.nbytes + 4096 * 16 + _HDF5_OVERHEAD)
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("coords", data=coords, maxshape=(None, 2),
                                  chunks=(max(1, min(len(coords), 4096)), 2))
            _set_attrs(ds, {**attrs, "milkit_version": __version__})
    return Path(path)


def read_coords(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """``coords`` ``(N, 2)`` int64 and its attributes from a coordinates or features file."""
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise DataError(f"{path}: no 'coords' dataset")
            ds = f["coords"]
            return np.asarray(ds[()], np.int64).reshape(-1, 2), _attrs(ds)
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None


def validate_coords(path: str | os.PathLike, expected: Mapping[str, Any] | None = None) -> np.ndarray:
    """Check a coordinates file: opens, ``(N, 2)`` integer coords, required attributes, and attribute values
    equal to ``expected`` (floats to 1e-9). Returns the coords; raises ``DataError`` naming what is wrong."""
    coords, attrs = read_coords(path)
    missing = [k for k in COORD_ATTRS if k not in attrs]
    if missing:
        raise DataError(f"{path}: missing attributes {', '.join(missing)}")
    for key, want in (expected or {}).items():
        have = attrs.get(key)
        same = (np.isclose(float(have), float(want), rtol=1e-9, atol=0) if isinstance(want, (int, float))
                and not isinstance(want, bool) and have is not None else have == want)
        if not same:
            raise DataError(f"{path}: attribute {key}={have!r}, expected {want!r}")
    return coords


class FeatureWriter:
    """Sequential batch writer into a pre-sized ``features`` dataset (see ``feature_writer``)."""

    def __init__(self, ds: h5py.Dataset) -> None:
        self._ds, self.n = ds, 0

    def write(self, batch: np.ndarray) -> None:
        b = len(batch)
        if self.n + b > self._ds.shape[0]:
            raise DataError(f"{self._ds.file.filename}: more feature rows than coords ({self.n + b})")
        self._ds[self.n:self.n + b] = batch
        self.n += b


@contextlib.contextmanager
def feature_writer(path: str | os.PathLike, coords: np.ndarray, coord_attrs: Mapping[str, Any], dim: int,
                   feature_attrs: Mapping[str, Any], dtype: str = "float32",
                   instance_labels: np.ndarray | None = None,
                   label_attrs: Mapping[str, Any] | None = None) -> Iterator[FeatureWriter]:
    """Yield a writer; on a clean exit with every row written the file is renamed to ``path``."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    n = len(coords)
    with atomic_path(path) as tmp:
        row_bytes = dim * np.dtype(dtype).itemsize
        require_free_space(path, (n + min(n, 1024)) * row_bytes + 3 * coords.nbytes + _HDF5_OVERHEAD)
        with h5py.File(tmp, "w") as f:
            cds = f.create_dataset("coords", data=coords)
            _set_attrs(cds, {**coord_attrs, "milkit_version": __version__})
            feats = f.create_dataset("features", shape=(n, dim), dtype=np.dtype(dtype),
                                     chunks=(max(1, min(n, 1024)), dim) if n else None)
            _set_attrs(feats, {**feature_attrs, "dim": dim, "milkit_version": __version__})
            if instance_labels is not None:
                lab = f.create_dataset("instance_labels", data=np.asarray(instance_labels, np.int64))
                _set_attrs(lab, label_attrs or {})
            writer = FeatureWriter(feats)
            yield writer
            if writer.n != n:
                raise DataError(f"{path}: wrote {writer.n} feature rows for {n} coords")


def validate_features(path: str | os.PathLike, coords: np.ndarray | None = None, dim: int | None = None,
                      expected: Mapping[str, Any] | None = None, labels: bool | None = None,
                      dtype: str | None = None) -> int:
    """Check a features file: opens, ``features`` ``(N, D)`` matches ``coords`` (row count, and values when
    ``coords`` is given), ``dim`` and ``dtype``, required attributes present and equal to ``expected`` (e.g.
    encoder name, weights hash), ``instance_labels`` present iff ``labels`` (when not None) with N rows.
    Returns N."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise DataError(f"{path}: needs 'features' and 'coords' datasets")
            feats, cds = f["features"], f["coords"]
            if feats.ndim != 2 or cds.ndim != 2 or cds.shape[1] != 2:
                raise DataError(f"{path}: features {feats.shape} / coords {cds.shape} have wrong rank")
            n = feats.shape[0]
            if cds.shape[0] != n:
                raise DataError(f"{path}: {n} feature rows but {cds.shape[0]} coords")
            if dim is not None and feats.shape[1] != dim:
                raise DataError(f"{path}: feature dim {feats.shape[1]}, expected {dim}")
            if dtype is not None and feats.dtype != np.dtype(dtype):
                raise DataError(f"{path}: features are {feats.dtype}, expected {dtype}")
            attrs = _attrs(feats)
            missing = [k for k in FEATURE_ATTRS if k not in attrs]
            if missing:
                raise DataError(f"{path}: features lack attributes {', '.join(missing)}")
            for key, want in (expected or {}).items():
                if attrs.get(key) != want:
                    raise DataError(f"{path}: features attribute {key}={attrs.get(key)!r}, expected {want!r}")
            has_labels = "instance_labels" in f
            if labels is not None and has_labels != labels:
                raise DataError(f"{path}: instance_labels {'present' if has_labels else 'missing'}")
            if has_labels and f["instance_labels"].shape != (n,):
                raise DataError(f"{path}: instance_labels {f['instance_labels'].shape} for {n} rows")
            if coords is not None and not np.array_equal(np.asarray(cds[()], np.int64), coords):
                raise DataError(f"{path}: coords differ from the coordinates file")
            return int(n)
    except OSError as exc:
        raise DataError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None
