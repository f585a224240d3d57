"""Bag sources: a labelled cohort of bags plus a way to load each one.

A source exposes ``records`` (one row per bag: ``bag_id, case_id, label, label_name`` and, when the cohort
table has one, ``split``), ``class_names``, ``in_dim`` and ``load(bag_id) -> Bag``. Datamodules, splits and
training only talk to this interface, so feature directories, classic MIL sets and synthetic bags are
interchangeable (``data.source`` in the config).
"""
from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from milkit.data.bag import Bag
from milkit.data.feature_files import FeatureFile, feature_file_meta, read_feature_file
from milkit.data.matching import bag_table, case_ids, match_slides, resolve_cohort_csv
from milkit.data.tables import read_table
from milkit.errors import DataError

__all__ = ["BagSource", "FeatureDirSource", "resolve_label_map"]

log = logging.getLogger(__name__)


def resolve_label_map(labels: Sequence[Any], label_map: Mapping[str, int] | Sequence[str] | None,
                      where: str) -> tuple[dict[str, int], list[str]]:
    """Turn a config label map (``{name: index}``, a list of names, or None = sorted unique) into
    ``(name → index, class_names)``; every label must be in it."""
    if label_map is None:
        names = sorted({str(v) for v in labels})
        mapping = {n: i for i, n in enumerate(names)}
    elif isinstance(label_map, Mapping):
        mapping = {str(k): int(v) for k, v in label_map.items()}
        if sorted(set(mapping.values())) != list(range(len(set(mapping.values())))):
            raise DataError(f"{where}: label map indices must be 0..C-1, got {sorted(set(mapping.values()))}")
        names = [None] * len(set(mapping.values()))
        for k, v in mapping.items():
            names[v] = names[v] or k
    else:
        names = [str(n) for n in label_map]
        mapping = {n: i for i, n in enumerate(names)}
    for i, v in enumerate(labels):
        if str(v) not in mapping:
            raise DataError(f"{where} row {i + 2}: label '{v}' is not in the label map (known: {', '.join(mapping)})")
    return mapping, names


class BagSource(abc.ABC):
    """A labelled collection of bags."""

    records: pd.DataFrame
    class_names: list[str]
    in_dim: int
    name: str = "source"

    @abc.abstractmethod
    def load(self, bag_id: str) -> Bag:
        """Load one bag (features as float32 ``(N, D)``)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def feature_meta(self) -> dict[str, Any]:
        """How the features were made (encoder, patch size, MPP ...), stored in checkpoints for inference."""
        return {}

    def describe(self) -> str:
        counts = self.records["label_name"].value_counts().to_dict()
        return (f"{self.name}: {len(self.records)} bags, {self.records['case_id'].nunique()} cases, "
                f"D={self.in_dim}, classes {counts}")

class FeatureDirSource(BagSource):
    """Per-slide feature files in a folder (milkit / TRIDENT / CLAM) plus a cohort CSV.

    Args:
        feature_dir: folder holding ``<slide_id>.h5`` or ``<slide_id>.pt`` (matched to the table's ids by the
            rules of :mod:`milkit.data.matching`: exact, without slide extension, TCGA barcode prefix).
        cohort_csv: a path or a packaged cohort name (``camelyon16``, ``tcga_nsclc`` ...; ``data/cohorts``);
            columns ``slide_id, case_id, label`` (+ optional ``split``); ``case_id`` defaults to the TCGA
            patient barcode (first 12 characters) or else the ``slide_id`` when absent. Other columns (e.g.
            ``survival_months, event``) are kept in ``records`` for the task to read; ``label`` may be absent
            when the task does not use it (survival).
        label_map: ``{name: index}``, list of names, or None (sorted unique labels).
        cache: keep loaded bags in RAM after the first read.
        validate: read every file once before training, so that NaN/inf, a features/coords row mismatch or an
            empty bag fails with the file's name before any fold trains (False: checked when a bag is loaded).
        strict: a table slide without a feature file is an error (default: reported and left out).
        exclude: slide ids to leave out (e.g. ``[test_114]``, which R²T-MIL and MHIM-MIL drop from CAMELYON16).
    """

    def __init__(self, feature_dir: str | Path, cohort_csv: str | Path,
                 label_map: Mapping[str, int] | Sequence[str] | None = None, cache: bool = False,
                 name: str | None = None, validate: bool = True, strict: bool = False,
                 exclude: Sequence[str] = ()) -> None:
        self.feature_dir, self.cohort_csv = Path(feature_dir), resolve_cohort_csv(cohort_csv)
        self.name = name or self.feature_dir.name
        self.cache = cache
        self._cache: dict[str, Bag] = {}
        df = read_table(self.cohort_csv, "cohort CSV", ("slide_id",), {"slide_id": str, "case_id": str})
        if not self.feature_dir.is_dir():
            raise DataError(f"{self.feature_dir}: feature directory not found")
        if df["slide_id"].duplicated().any():
            raise DataError(f"{self.cohort_csv}: slide_id '{df['slide_id'][df['slide_id'].duplicated()].iloc[0]}' appears twice")
        mapping, self.class_names = ({}, []) if "label" not in df else resolve_label_map(
            df["label"].tolist(), label_map, str(self.cohort_csv))
        df = df.assign(case_id=df["case_id"].astype(str) if "case_id" in df else case_ids(df["slide_id"]))
        df = df[~df["slide_id"].isin(set(exclude))]
        self.match = match_slides(df["slide_id"], self.feature_dir, strict, str(self.cohort_csv))
        # one line before training: matched / missing / extra files (a warning when table rows lack files)
        log.log(logging.WARNING if self.match.missing else logging.INFO, "[milkit] files %s", self.describe_files())
        df = bag_table(df, self.match, str(self.cohort_csv))
        self._paths = dict(zip(df["bag_id"], df["path"]))
        labels = df["label"] if "label" in df else pd.Series([None] * len(df))
        self.records = pd.DataFrame({"bag_id": df["bag_id"], "case_id": df["case_id"],
                                     "label": [mapping.get(str(v), -1) for v in labels],
                                     "label_name": [self.class_names[mapping[str(v)]] if mapping else "" for v in labels]})
        if "split" in df:
            self.records["split"] = df["split"].astype(str).str.lower()
        for col in df.columns.difference(["slide_id", "case_id", "label", "split", "bag_id", "path"]):
            self.records[col] = df[col].to_numpy()  # task columns (survival times ...)
        self._labels = {b: int(y) for b, y in zip(self.records["bag_id"], self.records["label"])}
        self._meta = {b: self._read_meta(b, validate) for b in self._paths}
        dims = {m["dim"] for m in self._meta.values()}
        if len(dims) > 1:
            by_dim = {m["dim"]: b for b, m in self._meta.items()}
            raise DataError(f"{self.feature_dir}: feature files disagree on D: {by_dim}")
        self.in_dim = dims.pop()

    def _read_meta(self, bag_id: str, validate: bool) -> dict[str, Any]:
        """Shape and attributes of a bag's file; with ``validate``, from reading (and checking) the whole file
        once, which raises a DataError naming it (the bag is kept when ``cache``)."""
        if not validate:
            return feature_file_meta(self._paths[bag_id])
        ff = read_feature_file(self._paths[bag_id])
        if self.cache:
            self._cache[bag_id] = self._bag(bag_id, ff)
        return {"num_instances": ff.features.shape[0], "dim": ff.features.shape[1], "attrs": ff.attrs}

    def describe_files(self) -> str:
        """One line on how the cohort table matched the feature files."""
        return f"{self.cohort_csv.name} x {self.feature_dir}: {self.match.summary()}"

    def path(self, bag_id: str) -> Path:
        return self._paths[bag_id]

    def load(self, bag_id: str) -> Bag:
        if bag_id in self._cache:
            return self._cache[bag_id]
        bag = self._bag(bag_id, read_feature_file(self._paths[bag_id]))
        if self.cache:
            self._cache[bag_id] = bag
        return bag

    def _bag(self, bag_id: str, ff: FeatureFile) -> Bag:
        return Bag(torch.from_numpy(ff.features), self._labels[bag_id], bag_id,
                   None if ff.coords is None else torch.from_numpy(ff.coords),
                   None if ff.instance_labels is None else torch.from_numpy(ff.instance_labels))

    def feature_meta(self) -> dict[str, Any]:
        first = next(iter(self._meta.values()))
        return {"feature_dir": str(self.feature_dir), "dim": self.in_dim, **first["attrs"]}
