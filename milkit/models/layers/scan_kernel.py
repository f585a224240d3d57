"""milkit's fused CPU selective scan: ``selective_scan_cpu.c``, compiled at first use, called through ctypes.

The PyTorch scan (``impl="ref"``) makes about 20 passes over the ``(L, D, N)`` states per forward + backward;
this kernel keeps a tile of 16 channels × N states in registers/L1 and makes one pass forward and two backward
(recompute a block of S steps from its checkpointed entry state, then the adjoint recurrence), so it is bound
by the ``exp`` of ``Δ A`` rather than by memory. Checkpoints every S steps: memory O(L·D + L/S·D·N).

It is compiled with the system C compiler (``$CC``, else ``cc``) with ``-O3 -march=native -ffast-math``
(vectorised ``expf`` from glibc's libmvec) into ``$MILKIT_CACHE`` (default ``~/.cache/milkit``)/kernels, keyed by
the source, the flags and the CPU's feature flags; the file is written under a temporary name and renamed.
No compiler, a failed build or ``MILKIT_SCAN_KERNEL=0`` make :func:`available` False, and ``impl="auto"`` then
uses the PyTorch scan. Threads: the channels are split over ``torch.get_num_threads()`` Python threads (ctypes
releases the GIL); each accumulates its own ``dB``/``dC``, summed at the end.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["available", "kernel_scan"]

_SRC = Path(__file__).with_name("selective_scan_cpu.c")
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-shared", "-std=c99"]
_BLOCK = 64  # steps per checkpoint (the backward's per-tile buffers: 2 · 64 · 16 · N floats ≈ 128 KiB at N = 16)
_TILE = 16  # channels per tile in the C code (W); thread ranges are multiples of it
log = logging.getLogger(__name__)

_P, _I64 = ctypes.c_void_p, ctypes.c_int64
_COMMON = [_P, _P, _P, _P, _P, _P, _P, ctypes.c_int, _I64, _I64, _I64, _I64, _I64, _I64, _I64]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


def _build(cache: Path) -> Path:
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256("\0".join([_SRC.read_text(), cc, *_FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    out = cache / f"selective_scan_cpu_{key}.so"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            subprocess.run([cc, *_FLAGS, str(_SRC), "-o", tmp, "-lm"], check=True, capture_output=True, timeout=120)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    if os.environ.get("MILKIT_SCAN_KERNEL", "1") == "0":
        return None
    cache = Path(os.environ.get("MILKIT_CACHE", Path.home() / ".cache" / "milkit")) / "kernels"
    try:
        lib = ctypes.CDLL(str(_build(cache)))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        log.warning("milkit: CPU scan kernel unavailable (%s %s); using the PyTorch scan", err,
                    detail.decode(errors="replace")[:300])
        return None
    lib.scan_fwd.argtypes = _COMMON + [_P, _P]
    lib.scan_bwd.argtypes = _COMMON + [_P, _P, _P, _P, _P, _P, _P, _P, _P]
    lib.scan_fwd.restype = lib.scan_bwd.restype = None
    return lib


def available() -> bool:
    """True when the CPU kernel is built (or can be) and not disabled with ``MILKIT_SCAN_KERNEL=0``."""
    return _lib() is not None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _ranges(d: int) -> list[tuple[int, int]]:
    """Channel ranges, one per thread, in whole tiles."""
    tiles = -(-d // _TILE)
    k = max(1, min(torch.get_num_threads(), tiles))
    bounds = [min(d, round(i * tiles / k) * _TILE) for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _run(fn: Any, ranges: list[tuple[int, int]], args: list[Any], per_range: list[list[Any]]) -> None:
    if len(ranges) == 1:
        fn(*args, *ranges[0], *per_range[0])
        return
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda i: fn(*args, *ranges[i], *per_range[i]), range(len(ranges))))


def _common(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, bias: Tensor | None,
            softplus: bool) -> list[Any]:
    """The arguments ``scan_fwd`` and ``scan_bwd`` share (pointers, flag, sizes, checkpoint interval)."""
    bsz, length, d = u.shape
    return [_ptr(t) for t in (u, delta, A, B, C, D, bias)] + [int(softplus), bsz, length, d, A.shape[1], _BLOCK]


class _KernelScan(torch.autograd.Function):
    """Time-major inputs: ``u, delta (B, L, D)``, ``A (D, N)``, ``B, C (B, L, N)``, ``D, bias (D,)``; float32."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                bias: Tensor | None, softplus: bool) -> Tensor:
        bsz, length, d = u.shape
        y = torch.empty_like(u)
        ckpt = u.new_empty(bsz, -(-length // _BLOCK), d, A.shape[1])
        ranges = _ranges(d)
        common = _common(u, delta, A, B, C, D, bias, softplus)
        _run(_lib().scan_fwd, ranges, common, [[y.data_ptr(), ckpt.data_ptr()]] * len(ranges))
        ctx.save_for_backward(u, delta, A, B, C, D, bias, ckpt)
        ctx.softplus = softplus
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, bias, ckpt = ctx.saved_tensors
        gy = gy.float().contiguous()
        gu, gdelta, gA = torch.empty_like(u), torch.empty_like(u), torch.empty_like(A)
        gD = None if D is None else torch.empty_like(D)
        gbias = None if bias is None else torch.empty_like(bias)
        ranges = _ranges(u.shape[2])
        gBC = B.new_zeros(len(ranges), 2, *B.shape)  # per-thread dB, dC
        common = _common(u, delta, A, B, C, D, bias, ctx.softplus)
        outs = [[gy.data_ptr(), ckpt.data_ptr()] + [_ptr(t) for t in (gu, gdelta, gA, gBC[i, 0], gBC[i, 1], gD, gbias)]
                for i in range(len(ranges))]
        _run(_lib().scan_bwd, ranges, common, outs)
        gB, gC = gBC.sum(0).unbind(0)
        return gu, gdelta, gA, gB, gC, gD, gbias, None


def kernel_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """The scan of :func:`~milkit.models.layers.selective_scan.selective_scan` (``(B, D, L)`` in and out, no gate)
    on the CPU kernel, in float32. Inputs laid out ``(B, L, D)`` in memory (``x.mT`` of a token-major tensor)
    are used without a copy."""
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    y = _KernelScan.apply(f32(u.mT), f32(delta.mT), f32(A), f32(B.mT), f32(C.mT), f32(D), f32(delta_bias),
                          delta_softplus)
    return y.mT
