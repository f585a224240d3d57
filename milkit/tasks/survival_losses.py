"""Survival losses and the bin / risk conventions of the discrete-time hazard head.

Discrete-time hazard NLL (Zadeh & Schmid 2020; the loss of PORPOISE, MambaMIL, R²T-MIL and MHIM-MIL v2):
``K`` logits per bag, hazards ``h_k = σ(logit_k)``, survival ``S_k = Π_{j≤k} (1 - h_j)``, ``S_{-1} = 1``.
For a patient whose time falls in bin ``y``: uncensored ``-log S_{y-1} - log h_y``, censored ``-log S_y``;
``loss = (1-α)·(censored + uncensored) + α·uncensored``, averaged over the batch. Computed in log space
(``log h = logσ(z)``, ``log(1-h) = logσ(-z)``) instead of upstream's ``log(clamp(·, 1e-7))``: the same values
away from saturation, finite gradients at it. Risk = ``-Σ_k S_k``.

Cox partial likelihood: torchsurv's ``neg_partial_log_likelihood`` (Efron ties) on one logit (the log hazard);
risk = that logit. It compares the bags *within* a step, so it needs batches of several bags with at least one
event (``data.batch_size`` ≥ 16 or so; a batch without events contributes zero loss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchsurv.loss.cox import neg_partial_log_likelihood

__all__ = ["nll_hazard_loss", "cox_loss", "time_bins", "survival_curve", "nll_risk"]


def time_bins(time: Tensor, inner_edges: Tensor) -> Tensor:
    """Bin index ``(B,)`` of each time: ``#{inner edges ≤ t}`` (pandas ``cut(right=False)``; times outside the
    training range fall into the first / last bin)."""
    return torch.bucketize(time.to(inner_edges.dtype), inner_edges, right=True)


def survival_curve(logits: Tensor) -> Tensor:
    """``S_k`` per bin, ``(B, K)``."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits.float()), dim=1))


def nll_risk(logits: Tensor) -> Tensor:
    """Upstream's risk score ``-Σ_k S_k``, ``(B,)``."""
    return -survival_curve(logits).sum(1)


def nll_hazard_loss(logits: Tensor, bins: Tensor, event: Tensor, alpha: float = 0.0) -> Tensor:
    """Discrete-time hazard negative log-likelihood. ``logits (B, K)``; ``bins (B,)`` long; ``event (B,)`` 0/1."""
    logits = logits.float()
    log_h = F.logsigmoid(logits)                                                   # (B, K)
    log_s = torch.cumsum(F.logsigmoid(-logits), dim=1)                             # (B, K)
    log_s = torch.cat([log_s.new_zeros(len(logits), 1), log_s], dim=1)             # (B, K+1): S_{-1} = 1
    y = bins.long().view(-1, 1)
    e = event.float().view(-1)
    uncensored = -e * (log_s.gather(1, y) + log_h.gather(1, y)).view(-1)
    censored = -(1 - e) * log_s.gather(1, y + 1).view(-1)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def cox_loss(logits: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood (Efron ties, mean over events) of the log hazards ``logits (B, 1)``."""
    event = event.bool().view(-1)
    if len(event) < 2 or not event.any():  # no comparable pair in this batch
        return logits.sum() * 0.0
    return neg_partial_log_likelihood(logits.float().view(-1), event, time.float().view(-1), ties_method="efron",
                                      reduction="mean")
