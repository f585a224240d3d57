"""EPEG: Embedded Position Encoding Generator (R²T-MIL, Tang et al., CVPR 2024).

Upstream (DearCaat/RRT-MIL ``modules/rmsa.py``, ``InnerAttention``) adds a depthwise convolution of the
attention logits to themselves, ``α = softmax(e + Conv(e))`` with ``e = s·q kᵀ`` of shape
``(regions, heads, L, L)`` and ``Conv = Conv2d(heads, heads, (k, 1), groups=heads, padding=(k//2, 0))``:
the kernel slides along the *query* axis, separately for each key column, with zero padding at the region
edges.

Because the logits are linear in ``q``, that convolution commutes with the product:
``Conv(q kᵀ) = Conv(q) kᵀ`` (same per-head taps along the query axis, zero rows padded at the edges), so
``e + Conv(e) = s·(q + Conv(q)) kᵀ``. milkit applies the convolution to the queries, ``(…, L, d)``, and never
materialises the ``L × L`` logit map; attention then runs in a fused kernel with memory linear in ``L``.
The result is identical up to rounding (``unit_tests/models/test_rrt.py`` checks it against the logit form).

The conv bias adds the same constant to every logit of a head, which softmax removes: upstream's
``epeg_bias`` parameter is mathematically inert (its gradient is exactly zero). It is kept, frozen, only so
that parameter counts and state-dict shapes match the official model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.errors import ConfigError

__all__ = ["EPEG"]


class EPEG(nn.Module):
    """Query-side EPEG: ``q ↦ q + Conv(q)``, equivalent to EPEG on the attention logits.

    Args:
        num_heads: attention heads (one kernel per head).
        kernel_size: odd kernel length ``k`` along the query axis (upstream ``epeg_k``, default 15).
        bias: keep upstream's (inert, frozen) per-head bias parameter.

    Shape:
        q: ``(G, heads, L, d)``; valid: ``(G, L)`` bool or None → ``(G, heads, L, d)``.
    """

    def __init__(self, num_heads: int, kernel_size: int = 15, bias: bool = True) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"epeg_k must be a positive odd number, got {kernel_size}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(num_heads, 1, kernel_size, 1))  # nn.Conv2d layout, as upstream
        self.bias = nn.Parameter(torch.zeros(num_heads), requires_grad=False) if bias else None
        centre = torch.zeros(1, 1, kernel_size, 1)
        centre[:, :, kernel_size // 2] = 1.0
        self.register_buffer("centre", centre, persistent=False)
        nn.init.xavier_normal_(self.weight)

    def forward(self, q: Tensor, valid: Tensor | None = None) -> Tensor:
        if valid is not None:
            # masked queries are zero rows, as the zero padding at region edges
            q = q.masked_fill(~valid[:, None, :, None], 0.0)
        # identity folded into the centre tap: one depthwise conv gives q + Conv(q)
        w = (self.weight + self.centre).to(q.dtype)
        return F.conv2d(q, w, None, padding=(self.kernel_size // 2, 0), groups=self.num_heads)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, bias={self.bias is not None}"

