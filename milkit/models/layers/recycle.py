"""Global recycle network (GRN) of MHIM-MIL v2 (Tang et al., IJCV 2025).

``k`` global queries attend to a bag's masked (recycled) instances and compress them into ``k`` tokens, which
the student sees next to its kept instances. The queries are not trained by gradient: after every training
forward they follow an exponential moving average of the tokens they produced. The attention weights are
trained by gradient.

Architecture (from the released code): one shared LayerNorm on queries and instances; multi-head
cross-attention (8 heads × 64, no bias on q/k/v, dropout 0.1 on the attention map and the output
projection ``Linear(heads·dim_head → dim)``); query init ``U(-v, v)``, ``v = sqrt(6 / (3·16² + dim))`` (VPT).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from milkit.models.layers.masked import masked_softmax

__all__ = ["MaskedCrossAttention", "GlobalRecycleNetwork"]


class MaskedCrossAttention(nn.Module):
    """Multi-head cross-attention from queries ``(B, K, D)`` to a padded set ``(B, M, D)`` with mask ``(B, M)``."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, q: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        b, m, _ = x.shape
        split = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731  (B, H, L, d)
        k, v = map(split, self.to_kv(x).chunk(2, dim=-1))
        q = split(self.to_q(q).expand(b, -1, -1))
        attn = masked_softmax(q @ k.transpose(-1, -2) * self.scale, mask[:, None, None, :], dim=-1)
        out = self.attn_drop(attn) @ v  # (B, H, K, d)
        return self.to_out(out.transpose(1, 2).reshape(b, q.shape[2], -1))


class GlobalRecycleNetwork(nn.Module):
    """Compress masked instances into ``n_queries`` tokens per bag.

    Args:
        dim: instance embedding width (the student's ``embed_dim``).
        n_queries: number of global queries ``k`` (paper grid 1, 5, 10).
        heads, dim_head, dropout: cross-attention shape.
        momentum: EMA factor ``μ`` of the global queries, ``G ← μ·G + (1-μ)·mean_b z_b``.
    """

    def __init__(self, dim: int, n_queries: int = 1, heads: int = 8, dim_head: int = 64, dropout: float = 0.1,
                 momentum: float = 0.9999) -> None:
        super().__init__()
        if n_queries < 1:
            raise ValueError(f"n_queries must be >= 1, got {n_queries}")
        self.momentum = float(momentum)
        self.norm = nn.LayerNorm(dim)
        self.attn = MaskedCrossAttention(dim, heads, dim_head, dropout)
        bound = math.sqrt(6.0 / (3 * 16 * 16 + dim))
        self.register_buffer("global_queries", torch.empty(1, n_queries, dim).uniform_(-bound, bound))

    @property
    def n_queries(self) -> int:
        return int(self.global_queries.shape[1])

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, M, D)`` recycled instances with ``mask (B, M)`` → tokens ``(B, k, D)`` and ``valid (B,)``:
        whether the bag had any instance to recycle (a bag without one gets no tokens)."""
        queries = self.global_queries.clone()  # the EMA step below must not touch the autograd graph
        z = self.attn(self.norm(queries), self.norm(x), mask)
        return z, mask.any(1)

    @torch.no_grad()
    def update_queries(self, z: Tensor, valid: Tensor) -> None:
        """EMA step of the global queries towards the batch mean of the tokens of valid bags."""
        w = valid.to(z.dtype).view(-1, 1, 1)
        total, count = (z.detach() * w).sum(0, keepdim=True), w.sum()
        if dist.is_available() and dist.is_initialized():  # keep the queries identical across DDP ranks
            dist.all_reduce(total)
            dist.all_reduce(count)
        if count > 0:
            self.global_queries.lerp_(total / count, 1.0 - self.momentum)
