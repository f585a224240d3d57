"""Attention-based MIL pooling (Ilse et al., 2018), plain and gated, with one or several branches."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from milkit.models.layers.masked import masked_softmax

__all__ = ["AttentionScorer", "AttentionPool"]


class AttentionScorer(nn.Module):
    """Raw attention logits ``a_n = w^T (tanh(V h_n) ⊙ sigm(U h_n))`` (gated) or ``w^T tanh(V h_n)``.

    Shapes: ``h (B, N, D)`` → ``(B, N, K)`` for ``K = n_branches``.
    """

    def __init__(self, dim: int, hidden: int = 128, n_branches: int = 1, gated: bool = False,
                 dropout: float = 0.0, bias: bool = True, act: str = "tanh") -> None:
        super().__init__()
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
        self.V = nn.Sequential(nn.Linear(dim, hidden, bias=bias), acts[act]())
        self.U = nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.Sigmoid()) if gated else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.w = nn.Linear(hidden, n_branches, bias=bias)

    def forward(self, h: Tensor) -> Tensor:
        a = self.V(h)
        if self.U is not None:
            a = a * self.U(h)
        return self.w(self.drop(a))


class AttentionPool(nn.Module):
    """Masked attention pooling: returns ``(pooled (B, D) or (B, K, D), logits (B, N) or (B, K, N))``."""

    def __init__(self, dim: int, hidden: int = 128, n_branches: int = 1, gated: bool = False,
                 dropout: float = 0.0, bias: bool = True, act: str = "tanh") -> None:
        super().__init__()
        self.n_branches = n_branches
        self.scorer = AttentionScorer(dim, hidden, n_branches, gated, dropout, bias, act)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.scorer(h).transpose(1, 2)  # (B, K, N)
        weights = masked_softmax(logits, mask.unsqueeze(1), dim=-1)
        pooled = torch.bmm(weights, h)  # (B, K, D)
        if self.n_branches == 1:
            return pooled.squeeze(1), logits.squeeze(1)
        return pooled, logits
