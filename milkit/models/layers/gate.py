"""The output gate of a Mamba mixer: ``(y + y_r) ⊙ SiLU(z)`` (``y_r`` optional), one fused op.

``y (B, L, C)`` is the forward branch's scan output; ``y_r`` the second branch's (MambaMIL's SR-/Bi-Mamba), already
in the tokens' order (the scan writes it there, ``selective_scan(..., out_order=order)``); ``z`` the gate half of
``in_proj``'s output (used in place when its rows are strided). On float32 CPU tensors milkit's C kernel
(``mamba_cpu.c``) does it in one pass forward and one backward, whose gradient of ``y`` is also that of ``y_r``;
elsewhere plain PyTorch ops.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from milkit.models.layers import cpu_kernels

__all__ = ["gated_sum"]


def gated_sum(y: Tensor, z: Tensor, y_r: Tensor | None = None, impl: str = "auto") -> Tensor:
    """``(y + y_r) * SiLU(z)``, or ``y * SiLU(z)`` without ``y_r``; ``(B, L, C)``.
    ``impl``: ``"auto"`` (the C kernel for float32 CPU tensors when it builds), ``"cpu"``, ``"torch"``."""
    if cpu_kernels.use_kernel(impl, y, z, y_r):
        return _KernelGate.apply(y, z, y_r)
    return (y if y_r is None else y + y_r) * F.silu(z)


class _KernelGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: Tensor, z: Tensor, y_r: Tensor | None) -> Tensor:
        y = y.contiguous()
        y_r = None if y_r is None else y_r.contiguous()
        z, zs = cpu_kernels.strided_rows(z)
        _check("gate_fwd", y, z, zs, y_r)
        bsz, length, c = y.shape
        out = cpu_kernels.empty(*y.shape, like=y)
        parts = cpu_kernels.ranges(bsz * length)
        args = [y.data_ptr(), cpu_kernels.ptr(y_r), z.data_ptr(), zs, c]
        cpu_kernels.run(cpu_kernels.lib().gate_fwd, parts, args, [[out.data_ptr()]] * len(parts))
        ctx.save_for_backward(y, z, y_r)
        ctx.zs = zs
        return out

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, ...]:
        y, z, y_r = ctx.saved_tensors
        bsz, length, c = y.shape
        gout = gout.contiguous()
        _check("gate_bwd", y, z, ctx.zs, y_r)
        cpu_kernels.check("gate_bwd", "gout", gout, y.shape)
        gy, gz = cpu_kernels.empty(*y.shape, like=y), cpu_kernels.empty(*y.shape, like=y)
        parts = cpu_kernels.ranges(bsz * length)
        args = [gout.data_ptr(), y.data_ptr(), cpu_kernels.ptr(y_r), z.data_ptr(), ctx.zs, c]
        cpu_kernels.run(cpu_kernels.lib().gate_bwd, parts, args, [[gy.data_ptr(), gz.data_ptr()]] * len(parts))
        return gy, gz, None if y_r is None else gy  # d/dy_r = d/dy


def _check(kernel: str, y: Tensor, z: Tensor, zs: int, y_r: Tensor | None) -> None:
    if y.dim() != 3:
        raise ValueError(f"milkit CPU kernel {kernel}: 'y' must be (B, L, C), got shape {tuple(y.shape)}")
    cpu_kernels.check(kernel, "y", y, y.shape)
    cpu_kernels.check(kernel, "y_r", y_r, y.shape, optional=True)
    cpu_kernels.check(kernel, "z", z, y.shape, row_stride=zs)
