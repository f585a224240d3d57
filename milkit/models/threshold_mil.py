"""Threshold MIL by construction: per-concept presence detectors combined by a monotone AND.

    x_n ─ MLP ─ Linear(E, K) ─▶ s_nk (concept logits) ─ τ·logsumexp_n(s_nk / τ) ─▶ p_k (presence of concept k)
    logit_c = b_c + Σ_k softplus(α_ck) · log σ(p_k)        (soft AND: log-probability that all are present)

Why it passes the algorithmic unit tests (Raff & Holt, NeurIPS 2023) with a single logit:

* **Monotone under adding instances.** ``p_k`` is a (smooth) maximum over instances, so adding an instance can
  only raise it; ``log σ`` is increasing and the weights ``softplus(α) ≥ 0``, so the bag logit can only rise
  (in floating point too: every step is a monotone operation). No instance can be evidence for the negative
  class, so a poison seen only in negatives (Tests 1-2) is useless, and the property check's "lowered"
  fraction is exactly 0.
* **Frequency cannot stand in for presence (Test 3).** ``logit ≤ b + w_k log σ(p_k)`` for every concept ``k``,
  so an absent concept caps the score whatever the others do; ``n`` copies of a concept raise its ``p_k`` by at
  most ``τ·log n`` and ``log σ`` saturates.
* **Expressive for threshold MIL.** Positive iff every concept with non-zero weight is present: an AND of
  presences, which instance-max (mi-Net) cannot represent. Unused detectors learn to fire on background
  (always present) or get weight ≈ 0, so the same model covers the single-concept standard test.

Why log-sum-exp and not a hard max: with a hard max only the top instance of each concept gets a gradient,
and in our runs every detector collapsed onto one concept (train AUC ≈ 0.75 on Test 3); the smooth maximum
lets the second concept's instances be learned (train and test AUC ≈ 1.0). ``tau → 0`` gives the hard max.

The guarantee is for ``num_classes=1`` (what the suite trains). With ``C ≥ 2`` every class logit is monotone,
but their difference is not. The authors' unfinished notebook sketch (``LinearNN`` with ``exp(weight)``)
points at the same fix; this model is milkit's, not from the paper.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import InstanceMLP, masked_logits
from milkit.types import BagFeatures

__all__ = ["MonotoneAnd", "ThresholdMIL"]


class MonotoneAnd(nn.Module):
    """``(B, K)`` presence logits → ``(B, C)``: ``b + log σ(p) @ softplus(α)^T``, non-decreasing in every ``p_k``."""

    def __init__(self, n_concepts: int, num_classes: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((num_classes, n_concepts), math.log(math.e - 1.0)))  # softplus(α) = 1
        self.bias = nn.Parameter(torch.zeros(num_classes))

    @property
    def weight(self) -> Tensor:
        return F.softplus(self.alpha)

    def forward(self, p: Tensor) -> Tensor:
        return F.linear(F.logsigmoid(p), self.weight, self.bias)


class ThresholdMIL(MILModel):
    """Args: ``n_concepts`` presence detectors ``K``; ``tau`` temperature of the smooth max over instances;
    ``embed_dims``/``act``/``dropout`` of the instance MLP. Instance scores: each instance's strongest concept
    logit; ``extras["concept_logits"]`` is ``(B, N, K)``."""

    def __init__(self, in_dim: int, num_classes: int, n_concepts: int = 4, tau: float = 1.0,
                 embed_dims: Sequence[int] | int = (128,), act: str = "relu", dropout: float = 0.0) -> None:
        super().__init__(in_dim, num_classes)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.embed = InstanceMLP(in_dim, embed_dims, act=act, dropout=dropout)
        self.concepts = nn.Linear(self.embed.out_dim, n_concepts)
        self.head = MonotoneAnd(n_concepts, num_classes)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        s = self.concepts(h)  # (B, N, K)
        p = self.tau * torch.logsumexp(masked_logits(s / self.tau, mask.unsqueeze(-1)), dim=1)  # (B, K)
        return BagFeatures(bag_embedding=p, instance_scores=s.amax(-1), extras={"concept_logits": s})


@register_model("threshold_mil", mil_assumption="threshold", tiny_kwargs={"embed_dims": (16,), "n_concepts": 2},
                description="Per-concept smooth-max presence + monotone soft AND (threshold MIL by construction)")
def threshold_mil(in_dim: int, num_classes: int, **kw) -> ThresholdMIL:
    return ThresholdMIL(in_dim, num_classes, **kw)
