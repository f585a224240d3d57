"""Causal depthwise 1-D convolution (+ optional SiLU) for token sequences ``(B, L, C)``, with a fast backward.

``y[:, t, c] = bias[c] + Σ_j weight[c, 0, j] · x[:, t - k + 1 + j, c]`` (zeros before ``t = 0``), i.e.
``nn.Conv1d(C, C, k, groups=C, padding=k-1)`` on ``x.mT`` truncated to the first ``L`` outputs, as in Mamba.

Computed as ``k`` shifted multiply-adds on the ``(B, L, C)`` layout. On CPU, oneDNN's grouped ``conv1d`` backward
is about 10× slower than a whole Mamba block without it; autograd through shifted slices is better but still
allocates a zero-filled gradient per slice. The hand-written backward below needs none of that.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_depthwise_conv1d"]

_ROWS = 256  # tokens per chunk when reducing the weight gradient (keeps the product in cache)


def causal_depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = False) -> Tensor:
    """``x (B, L, C)``, ``weight (C, 1, k)`` (``nn.Conv1d`` depthwise layout), ``bias (C,)`` → ``(B, L, C)``;
    ``silu=True`` applies SiLU to the result (Mamba's conv → activation)."""
    return _CausalConv.apply(x, weight, bias, silu)


def _conv(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """Forward: ``w (k, C)``; the shift by ``s`` pairs output ``t`` with input ``t - s``."""
    k, length = w.shape[0], x.shape[1]
    y = x * w[k - 1] if bias is None else torch.addcmul(bias, x, w[k - 1])
    for s in range(1, min(k, length)):
        y[:, s:].addcmul_(x[:, : length - s], w[k - 1 - s])
    return y


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
        w = weight[:, 0, :].t().contiguous()  # (k, C)
        y = _conv(x, w, bias)
        ctx.save_for_backward(x, w, bias)
        ctx.silu = silu
        return F.silu(y) if silu else y

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, ...]:
        x, w, bias = ctx.saved_tensors
        # the pre-activation is recomputed (k multiply-adds) rather than kept: one (B, L, C) tensor less
        gy = torch.ops.aten.silu_backward(gout, _conv(x, w, bias)) if ctx.silu else gout.contiguous()
        k, length = w.shape[0], x.shape[1]
        gx = gy * w[k - 1]
        for s in range(1, min(k, length)):
            gx[:, : length - s].addcmul_(gy[:, s:], w[k - 1 - s])
        gw = torch.zeros_like(w)
        # gw[k-1-s] = Σ_{b,t} gy[:, t] x[:, t-s]: reduce chunk by chunk so that the product stays in cache
        for t0 in range(0, length, _ROWS):
            t1 = min(length, t0 + _ROWS)
            for s in range(min(k, t1)):
                lo = max(t0, s)
                gw[k - 1 - s] += (gy[:, lo:t1] * x[:, lo - s : t1 - s]).sum((0, 1))
        gbias = None if bias is None else gy.sum((0, 1))
        return gx, gw.t().unsqueeze(1), gbias, None
