"""Survival labels of a cohort: reading and checking ``time`` / ``event``, patient-level bags, quantile bins.

``SurvivalBags`` wraps any bag source whose ``records`` carry the cohort's survival columns (one row per slide,
as in a feature directory's cohort CSV) and serves one bag per *patient* (all of its slides' instances
concatenated, as upstream; ``Bag.slide_index`` keeps each instance's slide of origin) or one bag per slide
(``level=slide``). A bag's label is ``(time, event)``. ``records["label"]`` becomes the split stratification key
``bin × event`` (cohort-wide quantile bins of the uncensored times: a stratification key only; the loss uses
the training fold's bins).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from milkit.data.bag import Bag
from milkit.data.sources import BagSource
from milkit.errors import ConfigError, DataError

__all__ = ["SurvivalBags", "read_survival_labels", "quantile_edges"]


def _where(source: BagSource) -> str:
    return str(getattr(source, "cohort_csv", None) or source.name)


def read_survival_labels(records: pd.DataFrame, where: str, time_col: str, event_col: str,
                         censorship_col: str) -> tuple[np.ndarray, np.ndarray]:
    """``(time, event)`` per row; one-line ``DataError`` naming ``where``, the CSV row and the cause."""
    if time_col not in records:
        raise DataError(f"{where}: no '{time_col}' column (set task.time_col)")
    if event_col in records:
        raw_event, flip = records[event_col], False
    elif censorship_col in records:
        raw_event, flip = records[censorship_col], True
    else:
        raise DataError(f"{where}: no '{event_col}' or '{censorship_col}' column (set task.event_col)")
    time = pd.to_numeric(records[time_col], errors="coerce").to_numpy(float)
    event = pd.to_numeric(raw_event, errors="coerce").to_numpy(float)
    for i in range(len(records)):
        row = f"{where} row {i + 2}"
        if not np.isfinite(time[i]):
            raise DataError(f"{row}: missing or non-numeric survival time '{records[time_col].iloc[i]}'")
        if time[i] < 0:
            raise DataError(f"{row}: negative survival time {time[i]:g}")
        if event[i] not in (0.0, 1.0):
            col = censorship_col if flip else event_col
            raise DataError(f"{row}: {col} must be 0 or 1, got '{raw_event.iloc[i]}'")
    return time, (1 - event if flip else event).astype(int)


def quantile_edges(time: np.ndarray, event: np.ndarray, n_bins: int, where: str) -> np.ndarray:
    """Upstream's bins: ``pd.qcut`` of the uncensored times into ``n_bins`` quantiles; returns the ``n_bins - 1``
    inner edges (the outer edges, min/max ± 1e-6 upstream, only decide that no time falls outside)."""
    uncensored = time[event == 1]
    if len(uncensored) == 0:
        raise DataError(f"{where}: no events (all patients censored); survival training needs events")
    if len(np.unique(uncensored)) < n_bins:
        raise DataError(f"{where}: fewer uncensored cases (distinct times: {len(np.unique(uncensored))}) than "
                        f"task.n_bins={n_bins} bins; lower task.n_bins")
    _, edges = pd.qcut(uncensored, q=n_bins, retbins=True, labels=False)
    return np.asarray(edges[1:-1], dtype=float)


class SurvivalBags(BagSource):
    """Patient- (or slide-) level survival bags over a slide-level source."""

    def __init__(self, base: BagSource, time_col: str, event_col: str, censorship_col: str, n_bins: int,
                 level: str = "patient") -> None:
        if level not in ("patient", "slide"):
            raise ConfigError(f"task.level must be 'patient' or 'slide', got '{level}'")
        self.base, self.level, self.where = base, level, _where(base)
        self.name, self.in_dim = base.name, base.in_dim
        recs = base.records.reset_index(drop=True)
        time, event = read_survival_labels(recs, self.where, time_col, event_col, censorship_col)
        recs = recs.assign(time=time, event=event)
        for case, rows in recs.groupby("case_id", sort=False).groups.items():
            if recs.loc[rows, "time"].nunique() > 1 or recs.loc[rows, "event"].nunique() > 1:
                i = int(rows[recs.loc[rows, ["time", "event"]].ne(recs.loc[rows[0], ["time", "event"]]).any(axis=1)][0])
                raise DataError(f"{self.where} row {i + 2}: case '{case}' has conflicting survival labels across its "
                                f"slides ({recs.loc[i, 'time']:g}/{recs.loc[i, 'event']} vs "
                                f"{recs.loc[rows[0], 'time']:g}/{recs.loc[rows[0], 'event']})")
        extra = [c for c in ("split", "true_risk") if c in recs]
        if level == "patient":
            self.slides = recs.groupby("case_id", sort=False)["bag_id"].apply(list).to_dict()
            recs = recs.groupby("case_id", sort=False).first().reset_index().assign(bag_id=lambda d: d["case_id"])
        else:
            self.slides = {b: [b] for b in recs["bag_id"]}
        edges = quantile_edges(recs["time"].to_numpy(), recs["event"].to_numpy(), n_bins, self.where)
        strata = np.searchsorted(edges, recs["time"].to_numpy(), side="right") * 2 + recs["event"].to_numpy()
        self.class_names = [f"bin{b}_{'event' if e else 'censored'}" for b in range(n_bins) for e in (0, 1)]
        self.records = pd.DataFrame({"bag_id": recs["bag_id"].astype(str), "case_id": recs["case_id"].astype(str),
                                     "label": strata, "label_name": [self.class_names[s] for s in strata],
                                     "time": recs["time"], "event": recs["event"], **{c: recs[c] for c in extra}})
        self._labels = {b: (float(t), float(e)) for b, t, e in zip(self.records["bag_id"], self.records["time"],
                                                                   self.records["event"])}

    def load(self, bag_id: str) -> Bag:
        parts = [self.base.load(s) for s in self.slides[bag_id]]
        label = self._labels[bag_id]
        if len(parts) == 1:
            return replace(parts[0], label=label, bag_id=bag_id)
        cat = lambda name: None if any(getattr(p, name) is None for p in parts) else torch.cat(  # noqa: E731
            [getattr(p, name) for p in parts])
        index = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(parts)])
        return Bag(cat("features"), label, bag_id, cat("coords"), cat("instance_labels"), index)

    def feature_meta(self) -> dict[str, Any]:
        return self.base.feature_meta()

    def describe(self) -> str:
        n, events = len(self.records), int(self.records["event"].sum())
        return (f"{self.name}: {n} {self.level} bags from {len(self.base.records)} slides, "
                f"{self.records['case_id'].nunique()} cases, D={self.in_dim}, {events} events "
                f"({100 * (1 - events / n):.0f}% censored), median time {self.records['time'].median():.1f}")
