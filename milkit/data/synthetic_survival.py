"""Synthetic survival cohorts with a known per-patient risk (``data=synthetic_survival``), offline and seeded.

Each patient has ``Dirichlet(1)`` proportions of four instance types, ``min_size..max_size`` instances split
over 1..``max_slides`` slides; features are ``N(signal · u_type, I)`` with random unit directions ``u`` (type 0,
background, at the origin): the research note's design (default), under which the bag mean is linear in the type
fractions, so a mean-pooled linear Cox model is close to the oracle too. ``symmetric=true`` gives every instance a
random sign (``±signal · u_type``): the bag *mean* then carries no type information and mean pooling of raw
features is at chance, while an instance embedding followed by pooling can still recover the fractions.
The true log-hazard is ``risk_scale · (f · β)`` with ``f`` the patient's realised type fractions and
``β`` = (background 0, low-risk tumour 0, aggressive tumour +1.5, protective immune -1.0). Times follow a Weibull
proportional-hazards model (shape 1.2, scale 40 months), censoring is exponential (mean 70) with an
administrative cut at 120 months: with the defaults about 30 % censored, oracle c-index ≈ 0.80. The instance
types are kept as ``instance_labels`` (localisation checks) and ``true_risk`` per slide row gives the oracle
c-index of any set of patients.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from milkit.data.bag import Bag
from milkit.data.sources import BagSource
from milkit.data.synthetic import check_bag_sizes

__all__ = ["SyntheticSurvivalSource"]


class SyntheticSurvivalSource(BagSource):
    """One row per slide in ``records``: ``bag_id, case_id, survival_months, event, true_risk`` (no class label)."""

    def __init__(self, n_patients: int = 400, in_dim: int = 32, min_size: int = 30, max_size: int = 200,
                 max_slides: int = 2, signal: float = 3.0, betas: Sequence[float] = (0.0, 0.0, 1.5, -1.0),
                 risk_scale: float = 4.0, weibull_shape: float = 1.2, weibull_scale: float = 40.0,
                 censor_mean: float = 70.0, admin_cut: float = 120.0, symmetric: bool = False, seed: int = 0) -> None:
        check_bag_sizes(min_size, max_size)
        rng = np.random.default_rng(seed)
        g = torch.Generator().manual_seed(seed)
        k = len(betas)
        centers = signal * torch.nn.functional.normalize(torch.randn(k, in_dim, generator=g), dim=1)
        centers[0] = 0.0
        self.name, self.in_dim, self.class_names = "synthetic_survival", in_dim, []
        self._bags: dict[str, Bag] = {}
        rows = []
        for p in range(n_patients):
            n = int(rng.integers(min_size, max_size + 1))
            types = torch.from_numpy(rng.choice(k, size=n, p=rng.dirichlet(np.ones(k))))
            sign = torch.randint(0, 2, (n, 1), generator=g) * 2.0 - 1.0 if symmetric else torch.ones(n, 1)
            x = sign * centers[types] + torch.randn(n, in_dim, generator=g)
            log_hazard = risk_scale * float(np.bincount(types.numpy(), minlength=k) @ np.asarray(betas)) / n
            t_event = weibull_scale * (-np.log(rng.uniform()) * np.exp(-log_hazard)) ** (1 / weibull_shape)
            t_censor = min(rng.exponential(censor_mean), admin_cut)
            time, event = min(t_event, t_censor), int(t_event <= t_censor)
            cuts = np.sort(rng.choice(np.arange(1, n), size=int(rng.integers(1, max_slides + 1)) - 1, replace=False))
            for s, idx in enumerate(np.split(np.arange(n), cuts)):
                bag_id = f"p{p:04d}_s{s}"
                side = int(len(idx) ** 0.5) + 1
                coords = torch.stack([torch.arange(len(idx)) % side, torch.arange(len(idx)) // side], 1) * 256
                self._bags[bag_id] = Bag(x[idx], None, bag_id, coords, types[idx])
                rows.append((bag_id, f"p{p:04d}", round(time, 4), event, log_hazard))
        self.records = pd.DataFrame(rows, columns=["bag_id", "case_id", "survival_months", "event", "true_risk"])
        self.records["label"], self.records["label_name"] = -1, ""

    def load(self, bag_id: str) -> Bag:
        return self._bags[bag_id]
