"""Kaplan–Meier plot of test patients split into high / low risk, with the log-rank p-value."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from milkit.tasks.survival_metrics import logrank_test
from milkit.utils.io import atomic_path

__all__ = ["km_plot"]


def km_plot(pooled: pd.DataFrame, path: Path | None) -> tuple[float, Path | None]:
    """``pooled``: columns ``time, event, high_risk``. Returns the log-rank p-value and the PNG written (or None)."""
    p = logrank_test(pooled["time"].to_numpy(), pooled["event"].to_numpy(), pooled["high_risk"].to_numpy())
    if path is None:
        return p, None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchsurv.stats.kaplan_meier import KaplanMeierEstimator

    fig, ax = plt.subplots(figsize=(5, 4))
    for high, label in ((False, "low risk"), (True, "high risk")):
        part = pooled[pooled["high_risk"] == high]
        if part["event"].sum() == 0:
            continue
        km = KaplanMeierEstimator()
        km(torch.tensor(part["event"].to_numpy(bool)), torch.tensor(part["time"].to_numpy(float)))
        t = torch.cat([torch.zeros(1, dtype=torch.float64), km.time.double()])
        s = torch.cat([torch.ones(1, dtype=torch.float64), km.km_est.double()])
        ax.step(t.numpy(), s.numpy(), where="post", label=f"{label} (n={len(part)})")
    ax.set_xlabel("time (months)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"test patients, pooled over folds; log-rank p = {p:.2g}")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return p, path
