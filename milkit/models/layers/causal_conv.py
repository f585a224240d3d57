"""Causal depthwise 1-D convolution (+ optional SiLU) for token sequences ``(B, L, C)``, with a fast backward.

``y[:, t, c] = bias[c] + Σ_j weight[c, 0, j] · x[:, t - k + 1 + j, c]`` (zeros before ``t = 0``), i.e.
``nn.Conv1d(C, C, k, groups=C, padding=k-1)`` on ``x.mT`` truncated to the first ``L`` outputs, as in Mamba.

Two implementations, one signature: on the CPU with float32 tensors, milkit's C kernel (``mamba_cpu.c``, one pass
forward, one backward, SiLU fused, the pre-activation recomputed rather than stored; see :mod:`.cpu_kernels`);
elsewhere (GPU, other dtypes, no compiler) ``k`` shifted multiply-adds on the ``(B, L, C)`` layout with a
hand-written backward. (On CPU, oneDNN's grouped ``conv1d`` backward is about 10× slower than a whole Mamba block
without it; autograd through shifted slices allocates a zero-filled gradient per slice.)

``order`` (``(B, L)`` long, a permutation per bag) makes the conv read the tokens in that order, i.e. it equals
``causal_depthwise_conv1d(permute_tokens(x, order), ...)``; the kernel gathers the rows as it reads them and
scatters their gradient back, with no permuted copy of ``x``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from milkit.models.layers import cpu_kernels

__all__ = ["causal_conv_branches", "causal_depthwise_conv1d", "permute_tokens"]

_ROWS = 256  # tokens per chunk when reducing the weight gradient (keeps the product in cache)


def permute_tokens(x: Tensor, order: Tensor) -> Tensor:
    """``out[b, i] = x[b, order[b, i]]`` for ``x (B, L, C)`` and ``order (B, L)`` long."""
    if order.shape[0] == 1:
        return x.index_select(1, order[0])
    return torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


Branch = tuple[Tensor, Optional[Tensor], Optional[Tensor]]  # (weight, bias, order)


def causal_depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = False,
                            order: Tensor | None = None, impl: str = "auto") -> Tensor:
    """``x (B, L, C)``, ``weight (C, 1, k)`` (``nn.Conv1d`` depthwise layout), ``bias (C,)`` → ``(B, L, C)``;
    ``silu=True`` applies SiLU to the result (Mamba's conv → activation); ``order (B, L)``: read the tokens in
    this order. ``impl``: ``"auto"`` (the C kernel for float32 CPU tensors when it builds), ``"cpu"``, ``"torch"``."""
    return causal_conv_branches(x, [(weight, bias, order)], silu, impl)[0]


def causal_conv_branches(x: Tensor, branches: Sequence[Branch], silu: bool = False, impl: str = "auto") -> list[Tensor]:
    """:func:`causal_depthwise_conv1d` of the same ``x`` for every ``(weight, bias, order)`` branch (MambaMIL's
    forward and reordered scans). On the kernel path it is one op whose backward sums the branches' gradients of
    ``x`` in place."""
    if cpu_kernels.use_kernel(impl, x, *(t for br in branches for t in br[:2])):
        return list(_KernelConv.apply(x, silu, *(t for br in branches for t in br)))
    return [_CausalConv.apply(x if order is None else permute_tokens(x, order), w, b, silu) for w, b, order in branches]


class _KernelConv(torch.autograd.Function):
    """``(x, silu, w_1, b_1, order_1, w_2, ...)`` → one output per branch; see ``mamba_cpu.c``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, silu: bool, *flat: Tensor | None) -> tuple[Tensor, ...]:
        x, xs = cpu_kernels.strided_rows(x)
        bsz, length, c = x.shape
        parts = cpu_kernels.ranges(c, 16)
        saved, outs = [], []
        for weight, bias, order in zip(flat[0::3], flat[1::3], flat[2::3]):
            wk = weight[:, 0, :].t().contiguous()  # (k, C)
            order = None if order is None else order.contiguous()
            y = cpu_kernels.empty(bsz, length, c, like=x)
            args = _args(x, xs, order, wk, bias, silu)
            cpu_kernels.run(cpu_kernels.lib().conv_fwd, parts, args, [[y.data_ptr()]] * len(parts))
            saved += [wk, bias, order]
            outs.append(y)
        ctx.save_for_backward(x, *saved)
        ctx.meta = xs, silu
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *gouts: Tensor) -> tuple[Tensor | None, ...]:
        x, *saved = ctx.saved_tensors
        xs, silu = ctx.meta
        bsz, length, c = x.shape
        parts = cpu_kernels.ranges(c, 16)
        gx = cpu_kernels.empty(bsz, length, c, like=x)
        ring = x.new_empty(len(parts), saved[0].shape[0] * max(b - a for a, b in parts))
        grads: list[Tensor | None] = []
        for i, (gout, wk, bias, order) in enumerate(zip(gouts, saved[0::3], saved[1::3], saved[2::3])):
            gw, gbias = torch.empty_like(wk), None if bias is None else torch.empty_like(bias)
            gout = gout.contiguous()  # an unused output's gradient arrives as zeros (materialized)
            cpu_kernels.check("conv_bwd", "gout", gout, x.shape)
            outs = [[gout.data_ptr(), gx.data_ptr(), gw.data_ptr(), cpu_kernels.ptr(gbias), ring[j].data_ptr()]
                    for j in range(len(parts))]
            # the first branch writes gx, the others add to it
            args = _args(x, xs, order, wk, bias, silu, "conv_bwd") + [int(i > 0)]
            cpu_kernels.run(cpu_kernels.lib().conv_bwd, parts, args, outs)
            grads += [gw.t().unsqueeze(1), gbias, None]
        return (gx, None, *grads)


def _args(x: Tensor, xs: int, order: Tensor | None, wk: Tensor, bias: Tensor | None, silu: bool,
          kernel: str = "conv_fwd") -> list[Any]:
    """``conv_fwd``'s / ``conv_bwd``'s leading arguments, checked."""
    bsz, length, c = x.shape
    cpu_kernels.check(kernel, "x", x, (bsz, length, c), row_stride=xs)
    cpu_kernels.check(kernel, "order", order, (bsz, length), dtype=torch.int64, optional=True)
    cpu_kernels.check(kernel, "weight (k, C)", wk, (wk.shape[0], c))
    cpu_kernels.check(kernel, "bias", bias, (c,), optional=True)
    return [x.data_ptr(), xs, cpu_kernels.ptr(order), wk.data_ptr(), cpu_kernels.ptr(bias), int(silu), bsz, length,
            c, wk.shape[0]]


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
