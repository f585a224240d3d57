"""``task=survival``: overall-survival prediction from (patient-level) bags.

Head and loss (``loss``): ``nll`` (discrete-time hazard NLL over ``n_bins`` quantile bins, upstream's default) or
``cox`` (Cox partial likelihood, one logit; needs several bags per step). Bins: quantiles of the uncensored
times of the **training fold** (``bins_from=train``); ``bins_from=cohort`` uses the whole cohort, as upstream
does before splitting (a mild leak, kept for reproduction). Risk = ``-Σ S`` (NLL) or the log hazard (Cox).
Metrics: Harrell's and Uno's c-index, td-AUC, IBS (``survival_metrics``); per fold also the bootstrap 95 % CI of
the test c-index, the oracle c-index when the source knows the true risk (``data=synthetic_survival``), and a
Kaplan–Meier plot of the test patients split at the median training-fold risk, pooled over folds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from milkit.data.bag import collate_bags
from milkit.errors import ConfigError
from milkit.tasks.base import Task, register_task
from milkit.tasks.survival_data import SurvivalBags, quantile_edges
from milkit.tasks.survival_losses import cox_loss, nll_hazard_loss, nll_risk, survival_curve, time_bins
from milkit.tasks.survival_metrics import (SURVIVAL_METRIC_NAMES, SurvivalMetrics, bootstrap_cindex_ci,
                                           harrell_cindex)

__all__ = ["SurvivalTask"]


@register_task("survival")
class SurvivalTask(Task):
    """Args:
        loss: ``nll`` or ``cox``.  n_bins: NLL time bins.  alpha: NLL weight of the uncensored term (upstream 0).
        bins_from: ``train`` (training fold) or ``cohort`` (upstream).
        time_col / event_col / censorship_col: cohort columns (``censorship`` = 1 - event is read when
            ``event_col`` is absent).
        level: ``patient`` (all slides of a case in one bag) or ``slide``.
        bootstrap: resamples of the test c-index CI (0 = none).  km_plot: write the pooled Kaplan–Meier plot.
    """

    categorical = False
    metric_names = SURVIVAL_METRIC_NAMES

    def __init__(self, loss: str = "nll", n_bins: int = 4, alpha: float = 0.0, bins_from: str = "train",
                 time_col: str = "survival_months", event_col: str = "event", censorship_col: str = "censorship",
                 level: str = "patient", bootstrap: int = 1000, km_plot: bool = True) -> None:
        if loss not in ("nll", "cox"):
            raise ConfigError(f"task.loss must be 'nll' or 'cox', got '{loss}'")
        if bins_from not in ("train", "cohort"):
            raise ConfigError(f"task.bins_from must be 'train' or 'cohort', got '{bins_from}'")
        if int(n_bins) < 2:
            raise ConfigError(f"task.n_bins must be >= 2, got {n_bins}")
        self.loss_name, self.n_bins, self.alpha, self.bins_from = loss, int(n_bins), float(alpha), bins_from
        self.columns = (time_col, event_col, censorship_col)
        self.level, self.bootstrap, self.km_plot = level, int(bootstrap), bool(km_plot)
        self.inner_edges: list[float] = []
        self._records: pd.DataFrame | None = None
        self._where = "survival cohort"
        self._km: list[pd.DataFrame] = []

    # ---- data ----------------------------------------------------------------------------------------------
    def prepare(self, source: Any) -> SurvivalBags:
        bags = source if isinstance(source, SurvivalBags) else SurvivalBags(source, *self.columns, self.n_bins,
                                                                            self.level)
        self._records, self._where = bags.records, bags.where
        return bags

    def strata(self, records: pd.DataFrame, folds: int) -> pd.DataFrame:
        """bin × event; the event alone when some bin × event stratum has fewer than ``folds`` cases; no
        stratification when even that is too fine (a tiny cohort with fewer censored cases than folds)."""
        for strata in (records["label"], records["event"].astype(int)):
            if strata.groupby(records["case_id"]).first().value_counts().min() >= folds:
                return records.assign(label=strata)
        return records.assign(label=0)

    def fit(self, train_records: pd.DataFrame) -> None:
        cohort = self.bins_from == "cohort" and self._records is not None
        recs = self._records if cohort else train_records
        self.inner_edges = quantile_edges(recs["time"].to_numpy(float), recs["event"].to_numpy(), self.n_bins,
                                          f"{self._where} ({'cohort' if cohort else 'training fold'})").tolist()

    def sample_groups(self, train_records: pd.DataFrame) -> pd.Series:
        """bin (of this fold's edges) × event, as MambaMIL's weighted sampler (bin × censorship)."""
        bins = time_bins(torch.tensor(train_records["time"].to_numpy(float)), self.inner_edges_tensor()).numpy()
        return pd.Series(bins * 2 + train_records["event"].to_numpy(int), index=train_records["bag_id"].to_numpy())

    def state(self) -> dict[str, Any]:
        return {"inner_edges": self.inner_edges}

    def load_state(self, state: dict[str, Any]) -> None:
        self.inner_edges = list(state.get("inner_edges", []))

    def inner_edges_tensor(self) -> Tensor:
        return torch.tensor(self.inner_edges, dtype=torch.float64)

    # ---- head, loss, predictions ---------------------------------------------------------------------------
    def out_dim(self, configured: int) -> int:  # noqa: ARG002
        return self.n_bins if self.loss_name == "nll" else 1

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.loss_name == "cox":
            return cox_loss(logits, y[:, 0], y[:, 1])
        if len(self.inner_edges) != self.n_bins - 1:
            raise ConfigError("survival task has no time bins: call task.fit(training records) first")
        bins = time_bins(y[:, 0], self.inner_edges_tensor().to(y.device))
        return nll_hazard_loss(logits, bins, y[:, 1], self.alpha)

    def predict(self, logits: Tensor) -> dict[str, Tensor]:
        if self.loss_name == "cox":
            return {"risk": logits[:, 0].float()}
        return {"risk": nll_risk(logits), "survival": survival_curve(logits)}

    def survival_at_edges(self, logits: Tensor) -> Tensor:
        """``S(e_k) = S_{k-1}`` at the inner bin edges ``(B, K-1)``; ``(B, 0)`` for the Cox head."""
        if self.loss_name == "cox":
            return logits.new_zeros(len(logits), 0)
        return survival_curve(logits)[:, :-1]

    def instance_score(self, logits: Tensor) -> Tensor:
        """MHIM's class-aware score under survival: the risk of the instance alone (highest = most salient)."""
        shape = logits.shape[:-1]
        return self.predict(logits.reshape(-1, logits.shape[-1]))["risk"].view(shape)

    def make_metrics(self, prefix: str, out_dim: int) -> nn.Module:  # noqa: ARG002
        return SurvivalMetrics(prefix, self)

    def prediction_rows(self, ids: list[str], logits: Tensor, y: Tensor | None) -> list[dict[str, Any]]:
        pred = self.predict(logits)
        rows = []
        for i, bag_id in enumerate(ids):
            row: dict[str, Any] = {"bag_id": bag_id}
            if y is not None:
                row.update(time=float(y[i, 0]), event=int(y[i, 1]))
            row["risk"] = float(pred["risk"][i])
            if "survival" in pred:
                row.update({f"S_{k}": float(s) for k, s in enumerate(pred["survival"][i])})
            rows.append(row)
        return rows

    # ---- per fold and per run ------------------------------------------------------------------------------
    @torch.no_grad()
    def _risks(self, module: Any, dm: Any, split: str) -> np.ndarray:
        module.eval()
        dataset = dm.dataset(split)
        risks = []
        for start in range(0, len(dataset), 8):
            batch = collate_bags([dataset[i] for i in range(start, min(start + 8, len(dataset)))]).to(module.device)
            risks.append(self.predict(module.method.eval_forward(module.model, batch).logits)["risk"].cpu())
        return torch.cat(risks).numpy()

    def fold_report(self, module: Any, dm: Any, fold_dir: Path, seed: int) -> dict[str, float]:
        preds = pd.DataFrame(module.test_predictions)
        if preds.empty:
            return {}
        risk, time, event = (torch.tensor(preds[c].to_numpy(float)) for c in ("risk", "time", "event"))
        out: dict[str, float] = {}
        if self.bootstrap and event.sum() >= 2:
            out["test/cindex_ci95_low"], out["test/cindex_ci95_high"] = bootstrap_cindex_ci(risk, time, event,
                                                                                      self.bootstrap, seed)
        recs = dm.source.records.set_index("bag_id")
        if "true_risk" in recs and event.sum() >= 2:
            true = torch.tensor(recs.loc[preds["bag_id"], "true_risk"].to_numpy(float))
            out["test/oracle_cindex"] = harrell_cindex(true, time, event)
        median = float(np.median(self._risks(module, dm, "train")))
        out["train_median_risk"] = median
        self._km.append(preds.assign(high_risk=preds["risk"] > median, fold=fold_dir.name))
        return out

    def finish(self, out_dir: Path) -> dict[str, Any]:
        if not self._km:
            return {}
        from milkit.tasks.survival_plots import km_plot  # matplotlib only when a run finishes

        pooled = pd.concat(self._km, ignore_index=True)
        self._km = []
        p, path = km_plot(pooled, out_dir / "km_test.png" if self.km_plot else None)
        return {"logrank_p": p, "km_plot": None if path is None else str(path),
                "pooled_test_cindex": harrell_cindex(*(torch.tensor(pooled[c].to_numpy(float))
                                                       for c in ("risk", "time", "event")))
                if pooled["event"].sum() >= 2 else math.nan}
