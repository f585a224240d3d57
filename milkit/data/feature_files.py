"""Read per-slide feature files as milkit, TRIDENT and CLAM write them.

* milkit / TRIDENT ``.h5``: ``features (N, D)``, ``coords (N, 2)`` with attributes, optional
  ``instance_labels (N,)``.
* CLAM ``h5_files/*.h5``: ``features`` + ``coords``, no attributes (features may be ``(1, N, D)`` in some
  forks; a leading singleton axis is squeezed).
* CLAM ``pt_files/*.pt``: a ``(N, D)`` tensor (or a dict with a ``features`` entry).

Every reader checks what training relies on and raises a one-line ``DataError`` naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from milkit.data.fast_read import read_dataset, to_float32_checked_finite
from milkit.errors import DataError

__all__ = ["FeatureFile", "read_feature_file", "feature_file_meta", "FEATURE_SUFFIXES"]

FEATURE_SUFFIXES = (".h5", ".pt")


@dataclass
class FeatureFile:
    """Arrays of one slide. Shapes: features ``(N, D)`` float32, coords ``(N, 2)`` int64, instance_labels ``(N,)``."""

    features: np.ndarray
    coords: np.ndarray | None = None
    instance_labels: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    out = {}
    for k, v in obj.attrs.items():
        out[k] = v.item() if isinstance(v, np.generic) else (v.tolist() if isinstance(v, np.ndarray) else v)
    return out


def _check(path: Path, ff: FeatureFile) -> FeatureFile:
    feats = ff.features
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.ndim != 2:
        raise DataError(f"{path}: 'features' must have shape (N, D), got {feats.shape}")
    if feats.shape[0] == 0:
        raise DataError(f"{path}: empty bag (0 instances)")
    feats, bad = to_float32_checked_finite(feats)
    if bad:
        raise DataError(f"{path}: features contain NaN or inf in {bad} of {feats.shape[0]} rows")
    for name, arr in (("coords", ff.coords), ("instance_labels", ff.instance_labels)):
        if arr is not None and arr.shape[0] != feats.shape[0]:
            raise DataError(f"{path}: '{name}' has {arr.shape[0]} rows but 'features' has {feats.shape[0]}")
    if ff.coords is not None and (ff.coords.ndim != 2 or ff.coords.shape[1] != 2):
        raise DataError(f"{path}: 'coords' must have shape (N, 2), got {ff.coords.shape}")
    ff.features = feats
    return ff


def read_feature_file(path: str | Path) -> FeatureFile:
    """Load one feature file (``.h5`` or ``.pt``) and validate it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: feature file not found")
    try:
        if path.suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                if "features" not in obj:
                    raise DataError(f"{path}: .pt dict has no 'features' entry (keys: {sorted(obj)})")
                coords = obj.get("coords")
                return _check(path, FeatureFile(np.asarray(obj["features"]),
                                                None if coords is None else np.asarray(coords, dtype=np.int64)))
            return _check(path, FeatureFile(np.asarray(obj)))
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise DataError(f"{path}: no 'features' dataset (found: {', '.join(f.keys()) or 'nothing'})")
            feats = f["features"]
            coords = read_dataset(f["coords"]).astype(np.int64) if "coords" in f else None
            inst = read_dataset(f["instance_labels"]).astype(np.int64) if "instance_labels" in f else None
            attrs = {**(_attrs(f["coords"]) if "coords" in f else {}), **_attrs(feats)}
            return _check(path, FeatureFile(read_dataset(feats), coords, inst, attrs))
    except DataError:
        raise
    except Exception as e:  # h5py/torch raise many types for corrupt files
        raise DataError(f"{path}: cannot read feature file ({type(e).__name__}: {e})") from None


def feature_file_meta(path: str | Path) -> dict[str, Any]:
    """Attributes and shape of a feature file without loading the features (``{}`` attrs for CLAM files)."""
    path = Path(path)
    if path.suffix == ".pt":
        ff = read_feature_file(path)
        return {"num_instances": ff.features.shape[0], "dim": ff.features.shape[1], "attrs": {}}
    try:
        with h5py.File(path, "r") as f:
            feats = f["features"]
            shape = feats.shape[1:] if feats.ndim == 3 else feats.shape
            attrs = {**(_attrs(f["coords"]) if "coords" in f else {}), **_attrs(feats)}
            return {"num_instances": int(shape[0]), "dim": int(shape[1]), "attrs": attrs}
    except Exception as e:
        raise DataError(f"{path}: cannot read feature file ({type(e).__name__}: {e})") from None
