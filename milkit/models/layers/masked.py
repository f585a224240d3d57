"""Mask helpers. Convention: ``mask`` is ``(B, N)`` bool with True = real instance.

Inside computations, masking is additive with ``torch.finfo(dtype).min`` (never ``-inf``), so an all-masked
row cannot produce NaN. Returned instance scores use ``-inf`` at padded positions so that they always sort last.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["full_mask", "masked_softmax", "masked_mean", "masked_max", "mask_scores", "masked_logits"]


def full_mask(x: Tensor) -> Tensor:
    """All-True mask for ``x`` of shape ``(B, N, D)``."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def masked_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Add ``finfo.min`` at padded positions; ``mask`` broadcasts against the trailing dims of ``logits``."""
    neg = torch.finfo(logits.dtype).min
    return logits.masked_fill(~mask, neg)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` that gives exactly zero weight to padded positions."""
    return torch.softmax(masked_logits(logits, mask), dim=dim) * mask.to(logits.dtype)


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over the instance axis. ``h``: ``(B, N, D)`` → ``(B, D)``."""
    w = mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


def masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Max over the instance axis, ignoring padding. ``h``: ``(B, N, D)`` → ``(B, D)``."""
    return masked_logits(h, mask.unsqueeze(-1)).amax(dim=1)


def mask_scores(scores: Tensor, mask: Tensor) -> Tensor:
    """Set padded positions of ``(B, N)`` instance scores to ``-inf`` for the returned ``MILOutput``."""
    return scores.masked_fill(~mask, float("-inf"))
