"""BPPL: bag-prototype pseudo-labelling of instances (CoMEL, Lee et al., ICCV 2025).

For a bag that is positive (its local class is in ``positive_classes``), correctly predicted, and predicted with
confidence max softmax > τ1:

1. positive prototype ``F⁺ = Σ_i a_i H_i`` (the attention-pooled bag embedding), negative prototype
   ``F⁻ = Σ_i w_i H_i`` with ``w_i = (1 − a_i) / Σ_j (1 − a_j)`` (reverse attention), over real instances;
2. ``softmax([cos(H_i, F⁻), cos(H_i, F⁺)] / T)`` gives each instance a pseudo-label ŷ_i ∈ {0, 1} and a
   confidence; instances with confidence > τ2 are kept;
3. the instance loss is ``(n_sel / n) · NLL(log [1 − p_i, p_i], ŷ_i)`` over the kept instances, where ``p_i`` is the
   min–max-normalised attention (``instance_probabilities``). Gradients flow through ``p`` only.

τ2 starts at τ and after every epoch becomes ``½ (1 + τ · q̄)``, q̄ = mean over the epoch's bags of
(bag confidence × 1[correct]); so τ2 ∈ [0.5, 0.5 + τ/2]. Defaults τ1 = 0.95, τ = 0.5, T = 1 (continual code).
Negative bags get no instance loss.

Differences from the official code: ``p_i`` divides by (max − min) rather than by max (upstream's
``(a − min) / (max + 1e-10)``), so the most attended instance always has p = 1; the reverse-attention weights and
all means run over real instances only (upstream is batch-size-1 code).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models.layers import masked_softmax
from milkit.types import MILOutput

__all__ = ["instance_probabilities", "bppl_pseudo_labels", "bppl_loss", "BPPL"]

_EPS = 1e-10


def instance_probabilities(scores: Tensor, mask: Tensor) -> Tensor:
    """Per-bag min–max normalised attention weights ``(B, N)`` in [0, 1]; 0 at padded positions.

    ``scores`` are raw attention logits (``MILOutput.instance_scores``; -inf at padding is fine).
    """
    a = masked_softmax(scores, mask)
    big = torch.finfo(a.dtype).max
    lo = a.masked_fill(~mask, big).amin(dim=1, keepdim=True)
    hi = a.masked_fill(~mask, -big).amax(dim=1, keepdim=True)
    return ((a - lo) / (hi - lo + _EPS)).masked_fill(~mask, 0.0)


@torch.no_grad()
def bppl_pseudo_labels(h: Tensor, attention: Tensor, mask: Tensor, logits: Tensor, y: Tensor, positive: Tensor,
                       tau1: float, tau2: float, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Instance pseudo-labels ``(B, N)`` (1 positive, 0 negative, -1 not selected) and their confidences.

    Shapes: ``h (B, N, E)`` instance embeddings, ``attention (B, N)`` pooling weights (sum 1 over real instances),
    ``logits (B, C)`` bag logits, ``y (B,)`` bag labels in the same class space, ``positive (B,)`` bool.
    """
    bag_conf, pred = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    eligible = positive & (pred == y) & (bag_conf > tau1)
    m = mask.to(h.dtype)
    pos_proto = (attention.unsqueeze(-1) * h).sum(dim=1)
    rev = (1.0 - attention) * m
    neg_proto = ((rev / rev.sum(dim=1, keepdim=True).clamp_min(_EPS)).unsqueeze(-1) * h).sum(dim=1)
    protos = F.normalize(torch.stack([neg_proto, pos_proto], dim=1), dim=-1)  # (B, 2, E)
    cos = F.normalize(h, dim=-1) @ protos.transpose(1, 2)  # (B, N, 2)
    conf, label = torch.softmax(cos / temperature, dim=-1).max(dim=-1)
    keep = eligible.unsqueeze(1) & mask & (conf > tau2)
    return label.masked_fill(~keep, -1), conf


def bppl_loss(prob: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean over bags of ``(1/n_b) Σ_{selected i} −log p(ŷ_i)`` with ``p(1) = prob``, ``p(0) = 1 − prob``."""
    sel = labels >= 0
    target = labels.clamp_min(0).to(prob.dtype)
    nll = -(target * torch.log(prob + _EPS) + (1 - target) * torch.log(1 - prob + _EPS))
    per_bag = (nll * sel).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
    return per_bag.mean()


class BPPL(nn.Module):
    """BPPL loss with its epoch-wise τ2 schedule (state kept in buffers, so it is checkpointed).

    Args:
        weight: loss coefficient (``seg_coef``).
        tau1: bag-confidence threshold.
        tau: initial τ2 and the slope of its schedule.
        temperature: softmax temperature on the prototype cosines.
        positive_classes: task-local class indices whose bags are pseudo-labelled.
    """

    def __init__(self, weight: float = 1.0, tau1: float = 0.95, tau: float = 0.5, temperature: float = 1.0,
                 positive_classes: Sequence[int] = (1,)) -> None:
        super().__init__()
        if not 0.0 <= tau <= 1.0 or not 0.0 <= tau1 <= 1.0:
            raise ConfigError(f"bppl: tau and tau1 must be in [0, 1], got tau={tau}, tau1={tau1}")
        self.weight, self.tau1, self.tau, self.temperature = weight, tau1, tau, temperature
        self.positive_classes = tuple(int(c) for c in positive_classes)
        self.register_buffer("tau2", torch.tensor(float(tau)))
        self.register_buffer("quality_sum", torch.zeros(()))
        self.register_buffer("quality_count", torch.zeros(()))

    def forward(self, out: MILOutput, mask: Tensor, y: Tensor, y_local: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted instance loss for one batch, and logs; also accumulates the epoch's bag quality."""
        h = out.extras.get("instance_embeddings")
        if h is None or out.instance_scores is None:
            raise ConfigError("method.bppl needs a model that returns instance scores and "
                              "extras['instance_embeddings'] (e.g. model=gdat)")
        probs = torch.softmax(out.logits.detach().float(), dim=-1)
        conf, pred = probs.max(dim=-1)
        self.quality_sum += (conf * (pred == y)).sum()
        self.quality_count += len(y)
        positive = torch.zeros_like(y, dtype=torch.bool)
        for c in self.positive_classes:
            positive |= y_local == c
        attention = masked_softmax(out.instance_scores, mask)
        labels, _ = bppl_pseudo_labels(h.detach(), attention.detach(), mask, out.logits, y, positive,
                                       self.tau1, float(self.tau2), self.temperature)
        loss = bppl_loss(instance_probabilities(out.instance_scores, mask), labels, mask)
        return self.weight * loss, {"bppl_loss": loss.detach(), "bppl_selected": (labels >= 0).sum().float()}

    @torch.no_grad()
    def end_epoch(self) -> None:
        """``τ2 ← ½ (1 + τ · q̄)``; resets the epoch's accumulators."""
        if self.quality_count > 0:
            self.tau2.fill_(0.5 * (1.0 + self.tau * float(self.quality_sum / self.quality_count)))
        self.quality_sum.zero_()
        self.quality_count.zero_()
