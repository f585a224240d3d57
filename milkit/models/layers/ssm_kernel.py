"""The middle of a Mamba mixer on the CPU kernels as one autograd op: ``x_proj → dt_proj → selective scan``.

For the conv's output ``u (B, L, d_inner)``: ``[dt | B | C] = u x_projᵀ``, ``Δ = dt dt_projᵀ`` (the bias enters the
scan), ``y = scan(u, Δ, A, B, C, D)`` (mamba-ssm's ``mamba_inner_fn`` fuses the same span on the GPU). One op
instead of autograd over the pieces: the gradient of ``u`` from ``x_proj`` is added in place to the scan's
(``addmm_``, no second ``(B, L, d_inner)`` tensor and no sum of the two), B and C go to the kernel without copies
of the projection's slices, and Δ lives in huge pages like the kernel's outputs. Same values and gradients as
:meth:`~milkit.models.layers.mamba.Mamba.ssm`'s composition (tested).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from milkit.models.layers import cpu_kernels
from milkit.models.layers.scan_kernel import scan_backward, scan_forward

__all__ = ["kernel_ssm"]


def kernel_ssm(u: Tensor, x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor, A: Tensor, D: Tensor,
               d_state: int, out_order: Tensor | None = None) -> Tensor:
    """``u (B, L, d_inner)`` float32 on the CPU → ``y (B, L, d_inner)`` (D skip included, no gate); ``out_order``
    as in :func:`~milkit.models.layers.selective_scan.selective_scan`."""
    order = None if out_order is None else out_order.long().contiguous()
    return _KernelSSM.apply(u.contiguous(), x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, d_state, order)


class _KernelSSM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u: Tensor, wx: Tensor, wdt: Tensor, bias: Tensor, A: Tensor, D: Tensor, n: int,
                order: Tensor | None) -> Tensor:
        bsz, length, di = u.shape
        rank = wdt.shape[1]
        xdbl = u.reshape(-1, di) @ wx.t()  # (B·L, rank + 2N): [dt | B | C]
        b_in, c_in = (xdbl[:, rank + i * n: rank + (i + 1) * n].contiguous().view(bsz, length, n) for i in (0, 1))
        delta = cpu_kernels.empty(bsz * length, di, like=u)
        torch.mm(xdbl[:, :rank], wdt.t(), out=delta)
        A, D, bias = A.contiguous(), D.contiguous(), bias.contiguous()
        y, ckpt = scan_forward(u, delta.view(bsz, length, di), A, b_in, c_in, D, bias, order, True)
        ctx.save_for_backward(u, xdbl, delta, wx, wdt, A, D, bias, order, ckpt, b_in, c_in)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        u, xdbl, delta, wx, wdt, A, D, bias, order, ckpt, b_in, c_in = ctx.saved_tensors
        bsz, length, di = u.shape
        rank = wdt.shape[1]
        gu, gdelta, gA, gB, gC, gD, gbias = scan_backward(gy, u, delta.view(bsz, length, di), A, b_in, c_in, D,
                                                          bias, order, True, ckpt)
        gdelta = gdelta.view(-1, di)
        g_xdbl = torch.cat([gdelta @ wdt, gB.view(-1, gB.shape[-1]), gC.view(-1, gC.shape[-1])], dim=1)
        gwdt = gdelta.t() @ xdbl[:, :rank]
        gu.view(-1, di).addmm_(g_xdbl, wx)  # the x_proj path's share, added in place
        gwx = g_xdbl.t() @ u.reshape(-1, di)
        return gu, gwx, gwdt, gbias, gA, gD, None, None
