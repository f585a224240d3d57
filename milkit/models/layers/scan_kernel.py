"""milkit's fused CPU selective scan: ``selective_scan_cpu.c``, built and loaded by :mod:`.cpu_kernels`.

The PyTorch scan (``impl="ref"``) makes about 20 passes over the ``(L, D, N)`` states per forward + backward;
this kernel keeps a tile of 16 channels × N states in registers/L1 and makes one pass forward and two backward
(recompute a block of S steps from its checkpointed entry state, then the adjoint recurrence), so it is bound
by the ``exp`` of ``Δ A`` rather than by memory. Checkpoints every S steps: memory O(L·D + L/S·D·N). The loops
run block by block and, within a block, tile by tile, so a block's rows stay in cache and in the TLB.

Threads: the channels are split over ``torch.get_num_threads()`` Python threads; each accumulates its own
``dB``/``dC``, summed at the end. Without a compiler (or with ``MILKIT_CPU_KERNELS=0``) :func:`available` is
False and ``impl="auto"`` uses the PyTorch scan.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from milkit.models.layers import cpu_kernels
from milkit.models.layers.cpu_kernels import available, ptr

__all__ = ["available", "kernel_scan"]

_BLOCK = 64  # steps per checkpoint (the backward's per-tile buffers: 2 · 64 · 16 · N floats ≈ 128 KiB at N = 16)
_TILE = 16  # channels per tile in the C code (W); thread ranges are multiples of it


def _common(kernel: str, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
            bias: Tensor | None, order: Tensor | None, softplus: bool) -> list[Any]:
    """The arguments ``scan_fwd`` and ``scan_bwd`` share (pointers, flag, sizes, checkpoint interval), checked."""
    if u.dim() != 3 or A.dim() != 2:
        raise ValueError(f"milkit CPU kernel {kernel}: 'u' must be (B, L, D) and 'A' (D, N), got shapes "
                         f"{tuple(u.shape)} and {tuple(A.shape)}")
    bsz, length, d = u.shape
    n = A.shape[1]
    for name, t, shape in (("u", u, (bsz, length, d)), ("delta", delta, (bsz, length, d)), ("A", A, (d, n)),
                           ("B", B, (bsz, length, n)), ("C", C, (bsz, length, n))):
        cpu_kernels.check(kernel, name, t, shape)
    cpu_kernels.check(kernel, "D", D, (d,), optional=True)
    cpu_kernels.check(kernel, "bias", bias, (d,), optional=True)
    cpu_kernels.check(kernel, "order", order, (bsz, length), dtype=torch.int64, optional=True)
    return [ptr(t) for t in (u, delta, A, B, C, D, bias, order)] + [int(softplus), bsz, length, d, A.shape[1], _BLOCK]


def scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, bias: Tensor | None,
                 order: Tensor | None, softplus: bool) -> tuple[Tensor, Tensor]:
    """The kernel's forward on time-major float32 inputs (``u, delta (B, L, D)``, ``A (D, N)``, ``B, C (B, L, N)``,
    ``D, bias (D,)``, ``order (B, L)`` int64: the output positions of the steps): ``y (B, L, D)`` and the
    checkpoints the backward needs."""
    common = _common("scan_fwd", u, delta, A, B, C, D, bias, order, softplus)
    bsz, length, d = u.shape
    y = cpu_kernels.empty(*u.shape, like=u)
    ckpt = cpu_kernels.empty(*_ckpt_shape(u, A), like=u)
    ranges = cpu_kernels.ranges(d, _TILE)
    cpu_kernels.run(cpu_kernels.lib().scan_fwd, ranges, common, [[y.data_ptr(), ckpt.data_ptr()]] * len(ranges))
    return y, ckpt


def scan_backward(gy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  bias: Tensor | None, order: Tensor | None, softplus: bool, ckpt: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients of ``u, delta, A, B, C, D, bias`` (None for an absent D or bias) from the gradient of ``y``."""
    common = _common("scan_bwd", u, delta, A, B, C, D, bias, order, softplus)
    gy = gy.float().contiguous()
    cpu_kernels.check("scan_bwd", "gy", gy, u.shape)
    cpu_kernels.check("scan_bwd", "ckpt", ckpt, _ckpt_shape(u, A))
    gu, gdelta, gA = cpu_kernels.empty(*u.shape, like=u), cpu_kernels.empty(*u.shape, like=u), torch.empty_like(A)
    gD = None if D is None else torch.empty_like(D)
    gbias = None if bias is None else torch.empty_like(bias)
    ranges = cpu_kernels.ranges(u.shape[2], _TILE)
    gBC = B.new_zeros(len(ranges), 2, *B.shape)  # per-thread dB, dC
    outs = [[gy.data_ptr(), ckpt.data_ptr()] + [ptr(t) for t in (gu, gdelta, gA, gBC[i, 0], gBC[i, 1], gD, gbias)]
            for i in range(len(ranges))]
    cpu_kernels.run(cpu_kernels.lib().scan_bwd, ranges, common, outs)
    gB, gC = gBC.sum(0).unbind(0)
    return gu, gdelta, gA, gB, gC, gD, gbias


def _ckpt_shape(u: Tensor, A: Tensor) -> tuple[int, ...]:
    """The entry states of every block of ``_BLOCK`` steps: ``(B, blocks, D rounded up to tiles, N)``."""
    bsz, length, d = u.shape
    return bsz, -(-length // _BLOCK), -(-d // _TILE) * _TILE, A.shape[1]


class _KernelScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                bias: Tensor | None, order: Tensor | None, softplus: bool) -> Tensor:
        y, ckpt = scan_forward(u, delta, A, B, C, D, bias, order, softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, bias, order, ckpt)
        ctx.softplus = softplus
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, bias, order, ckpt = ctx.saved_tensors
        return (*scan_backward(gy, u, delta, A, B, C, D, bias, order, ctx.softplus, ckpt), None, None)


def kernel_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                delta_bias: Tensor | None, delta_softplus: bool, out_order: Tensor | None = None) -> Tensor:
    """The scan of :func:`~milkit.models.layers.selective_scan.selective_scan` (``(B, D, L)`` in and out, no gate)
    on the CPU kernel, in float32. Inputs laid out ``(B, L, D)`` in memory (``x.mT`` of a token-major tensor)
    are used without a copy."""
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    order = None if out_order is None else out_order.long().contiguous()
    y = _KernelScan.apply(f32(u.mT), f32(delta.mT), f32(A), f32(B.mT), f32(C.mT), f32(D), f32(delta_bias), order,
                          delta_softplus)
    return y.mT
