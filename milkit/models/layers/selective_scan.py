"""Mamba's selective scan: milkit's own exact scan (CPU and GPU) and an optional mamba-ssm dispatch.

For every batch ``b``, channel ``d`` and state ``n`` (``A = -exp(A_log)`` in Mamba)::

    Δ_t = softplus(delta_t + delta_bias)            (when delta_softplus; else delta_t + delta_bias)
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t        h_0 = 0   ("ZOH" for A, Euler for B, as in Mamba)
    y_t = Σ_n C_t h_t + D u_t,     out_t = y_t ⊙ SiLU(z_t)

This is what ``mamba_ssm``'s ``selective_scan_fn`` / ``selective_scan_ref`` compute. Implementations, one
signature, chosen at run time by ``impl="auto"``: mamba-ssm's CUDA kernels (``"cuda"``, CUDA tensors, package
installed); milkit's fused C kernel on the CPU (``"cpu"``, float32 compute, :mod:`.scan_kernel`, built at first use
with the system compiler); milkit's PyTorch scan below (``"ref"``, any device and dtype, also float64).

``impl="ref"`` is a custom autograd function that never stores the ``(L, D, N)`` states. The sequence is
cut into blocks; per block the decays ``exp(Δ A)`` and inputs ``Δ u B`` are written into reused buffers and
the recurrence runs in place, one fused ``addcmul`` per step (several segments of the block at once when a
step alone is too small to keep the device busy). Only each block's entry state is kept. The backward
recomputes a block's states from its entry state and runs the adjoint recurrence
``λ_t = C_t gy_t + exp(Δ_{t+1} A) λ_{t+1}`` backwards in time, so memory is O(L·D + L/S·D·N) and time O(L·D·N).
Compute is float32 (float64 for float64 inputs), as in mamba-ssm.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from milkit.errors import ConfigError
from milkit.models.layers import scan_kernel

__all__ = ["selective_scan", "selective_scan_loop", "mamba_ssm_available"]

_IMPLS = ("auto", "ref", "cpu", "cuda")
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
# Elements per block buffer ((S, B, N, D) floats) and per scan step, tuned on CPU (cache-sized blocks: 32 steps
# of Mamba's D·N = 16k; one such step is already large enough) and for GPUs (few, wide steps).
_BLOCK_ELEMS = {"cpu": 1 << 19, "cuda": 1 << 27}
_STEP_ELEMS = {"cpu": 1 << 13, "cuda": 1 << 21}


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan() -> Callable[..., Tensor] | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - any import failure (no CUDA build, missing triton...) means "absent"
        return None
    return selective_scan_fn


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's CUDA selective-scan kernels can be imported."""
    return _mamba_ssm_scan() is not None


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   impl: str = "auto", out_order: Tensor | None = None) -> Tensor:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` signature.

    Shapes: ``u, delta, z (B, D, L)``; ``A (D, N)`` real; ``B, C (B, N, L)`` (input-dependent, one group);
    ``D, delta_bias (D,)``. Returns ``(B, D, L)`` in ``u``'s dtype.

    ``out_order (B, L)`` long (milkit's addition): step ``t`` of the scan is returned at position
    ``out_order[b, t]``, i.e. a scan over tokens read in that order hands back its output in the tokens' own order
    (the gate ``z`` is then in that order too). The CPU kernel writes it in place; the other paths scatter.

    ``impl``: ``"ref"`` milkit's PyTorch scan (any device); ``"cpu"`` milkit's C kernel (CPU tensors, a C
    compiler); ``"cuda"`` mamba-ssm's kernels (CUDA tensors, package installed); ``"auto"``: ``"cuda"`` for CUDA
    tensors when mamba-ssm is there, ``"cpu"`` for CPU tensors of up to 32 bits when the kernel builds, else ``"ref"``.
    """
    if impl not in _IMPLS:
        raise ConfigError(f"selective_scan impl must be one of {_IMPLS}, got '{impl}'")
    _check_shapes(u, delta, A, B, C)
    if out_order is not None and tuple(out_order.shape) != (u.shape[0], u.shape[2]):
        raise ConfigError(f"selective_scan: out_order must be (B, L) = {(u.shape[0], u.shape[2])}, "
                          f"got {tuple(out_order.shape)}")
    if impl == "auto":
        if u.is_cuda:
            impl = "cuda" if mamba_ssm_available() else "ref"
        else:
            impl = "cpu" if u.device.type == "cpu" and u.dtype != torch.float64 and scan_kernel.available() else "ref"
    if impl == "cpu" and (u.device.type != "cpu" or not scan_kernel.available()):
        raise ConfigError("selective_scan impl='cpu' needs CPU tensors and a C compiler to build milkit's kernel "
                          "(or MILKIT_CPU_KERNELS is 0); use impl='ref' or 'auto'")
    if impl == "cuda":
        fn = _mamba_ssm_scan()
        if fn is None or not u.is_cuda:
            raise ConfigError("selective_scan impl='cuda' needs CUDA tensors and mamba-ssm's compiled kernels "
                              "(pip install milkit[mamba] on a GPU machine); use impl='ref' or 'auto'")
        if out_order is None:
            return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        y = _to_positions(fn(u, delta, A, B, C, D, None, delta_bias, delta_softplus), out_order)
        return y if z is None else y * F.silu(z)
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    cast = lambda t: None if t is None else t.to(cdt)  # noqa: E731
    with torch.autocast(u.device.type, enabled=False):  # the contractions must not run in bf16/fp16
        args = [cast(t) for t in (u, delta, A, B, C, D, delta_bias)]
        if impl == "cpu":
            y = scan_kernel.kernel_scan(*args, delta_softplus, out_order)
        else:
            y = _to_positions(_SelectiveScan.apply(*args, delta_softplus), out_order)
        if z is not None:
            y = y * F.silu(z.to(cdt))
    return y.to(u.dtype)


def selective_scan_loop(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                        z: Tensor | None = None, delta_bias: Tensor | None = None,
                        delta_softplus: bool = False) -> Tensor:
    """The plain sequential loop through autograd: mamba-ssm's ``selective_scan_ref`` (same signature as
    :func:`selective_scan`), iterating ``unbind``-ed time steps instead of indexing ``x[:, :, i]``.

    The baseline of ``scripts/bench_mamba.py`` and a readable definition: it materialises ``exp(ΔA)`` and
    ``ΔBu`` as ``(B, D, L, N)`` tensors and keeps every state for backward (O(L·D·N) memory), with a few
    autograd ops per time step. (Indexing per step, as ``selective_scan_ref`` does, makes backward O(L²).)
    """
    dtype, cdt = u.dtype, torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for a, bu, c in zip(delta_a.unbind(2), delta_b_u.unbind(2), C.unbind(2)):
        h = a * h + bu
        ys.append(torch.einsum("bdn,bn->bd", h, c))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(dtype)


def _to_positions(y: Tensor, order: Tensor | None) -> Tensor:
    """``out[b, :, order[b, t]] = y[b, :, t]`` (``y (B, D, L)``); ``y`` itself without an order."""
    if order is None:
        return y
    return torch.zeros_like(y).scatter(2, order[:, None, :].expand_as(y), y)


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ConfigError(f"selective_scan: u and delta must be (B, D, L), got {tuple(u.shape)} and {tuple(delta.shape)}")
    bsz, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ConfigError(f"selective_scan: A must be real (D={d}, N), got {tuple(A.shape)} {A.dtype}")
    want = (bsz, A.shape[1], length)
    if tuple(B.shape) != want or tuple(C.shape) != want:
        raise ConfigError(f"selective_scan: B and C must be (B, N, L) = {want}, got {tuple(B.shape)} and {tuple(C.shape)}")


def _plan(length: int, state_elems: int, device: torch.device) -> tuple[int, int]:
    """Block length ``S`` and segments per step ``K`` for one state of ``state_elems`` = B·D·N floats."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    block = max(1, min(length, _BLOCK_ELEMS[kind] // state_elems))
    segments = max(1, min(_STEP_ELEMS[kind] // state_elems, math.isqrt(2 * block)))
    return block, segments


def _linear_scan_(decay: Tensor, x: Tensor, h0: Tensor, segments: int, reverse: bool = False,
                  rows: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None) -> Tensor:
    """In place ``x_t ← decay_t ⊙ h_{t∓1} + x_t`` along dim 0 (``h`` = ``h0`` before the first step).

    Forward runs ``t = 0..S-1`` with ``h_{-1} = h0``; reverse runs ``t = S-1..0`` with ``h_S = h0``.
    Returns (a copy of) the state after the last step. With ``segments = K > 1``, K equal segments advance together
    (pass 1: each segment's end state from zero; then the K entry states in sequence; pass 2: rerun each
    segment from its true entry state), so a step is one op on K states instead of one. ``rows``: the
    ``unbind(0)`` views of ``decay`` and ``x``, when the caller keeps them (they are reused buffers).
    """
    steps = x.shape[0]
    seg_len = steps // segments
    if segments == 1 or seg_len < 2:
        return _sequential_(*(rows or (decay.unbind(0), x.unbind(0))), h0, reverse)
    par = segments * seg_len
    # The time steps not covered by the K segments come last in scan order (reverse: at the front).
    head, tail = (slice(steps - par, steps), slice(0, steps - par)) if reverse else (slice(0, par), slice(par, steps))
    dec = decay[head].reshape(segments, seg_len, *x.shape[1:])
    xs = x[head].view(segments, seg_len, *x.shape[1:])
    order = range(seg_len - 1, -1, -1) if reverse else range(seg_len)
    it = iter(order)
    ends = xs[:, next(it)].clone()
    for t in it:
        ends = torch.addcmul(xs[:, t], dec[:, t], ends)
    gains = dec.prod(dim=1)
    entries = torch.empty_like(ends)
    h = h0
    for k in (range(segments - 1, -1, -1) if reverse else range(segments)):
        entries[k] = h
        h = torch.addcmul(ends[k], gains[k], h)
    prev = entries
    for t in order:
        prev = torch.addcmul(xs[:, t], dec[:, t], prev, out=xs[:, t])
    if tail.stop > tail.start:
        h = _sequential_(decay[tail].unbind(0), x[tail].unbind(0), h, reverse)
    return h


def _sequential_(ds: Sequence[Tensor], xs: Sequence[Tensor], h0: Tensor, reverse: bool) -> Tensor:
    prev = h0
    for x_t, d_t in (zip(reversed(xs), reversed(ds)) if reverse else zip(xs, ds)):
        prev = x_t.addcmul_(d_t, prev)
    return prev.clone()  # not a view of x, whose buffer the caller reuses


def _contract(vec: Tensor, mat: Tensor, over: str, out: Tensor | None = None) -> Tensor:
    """Per-step contractions of a block ``mat (S, B, N, D)`` (batched small GEMVs).

    ``over="n"``: ``vec (S, B, N) → Σ_n vec·mat  (S, B, D)``; ``over="d"``: ``vec (S, B, D) → Σ_d vec·mat  (S, B, N)``.
    """
    s, b, n, d = mat.shape
    m = mat.view(s * b, n, d)
    if over == "n":
        res = torch.bmm(vec.reshape(s * b, 1, n), m, out=None if out is None else out.view(s * b, 1, d))
        return res.view(s, b, d)
    res = torch.bmm(vec.reshape(s * b, 1, d), m.transpose(1, 2), out=None if out is None else out.view(s * b, 1, n))
    return res.view(s, b, n)


def _decay(dt: Tensor, at2: Tensor, out: Tensor) -> Tensor:
    """``exp(Δ A)`` for a block into ``out (S, B, N, D)``; ``at2 = Aᵀ·log2(e)`` (exp2 is ~3× faster than exp on CPU)."""
    return torch.exp2(torch.mul(dt[:, :, None, :], at2, out=out), out=out)


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + eˣ)`` through exp2/log2, which are vectorised on CPU (``log1p``/``F.softplus`` are ~5× slower).
    For ``x < -16`` (float32) it returns 0 instead of ``eˣ`` (< 1.2e-7)."""
    return torch.log2(torch.exp2(x.abs() * -_LOG2E).add_(1.0)).mul_(_LN2).add_(x.clamp(min=0))


class _SelectiveScan(torch.autograd.Function):
    """``y_t = Σ_n C_t h_t + D u_t`` with ``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t`` and
    ``Δ = softplus(delta + delta_bias)`` (see the module docstring); ``D``, ``delta_bias`` may be None.

    Block buffers are laid out ``(S, B, N, D)``: the contractions over ``n`` and ``d`` are then fast GEMVs.
    Δ is recomputed per block from ``delta``, so nothing of size L·D is stored besides the inputs.
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                delta_bias: Tensor | None, softplus: bool) -> Tensor:
        bsz, d, length = u.shape
        n = A.shape[1]
        block, segments = _plan(length, bsz * d * n, u.device)
        # Time-major views (L, B, D) and (L, B, N); inputs from a (B, L, D) layout stay contiguous.
        ut, rt, bt, ct = u.permute(2, 0, 1), delta.permute(2, 0, 1), B.permute(2, 0, 1), C.permute(2, 0, 1)
        at2 = A.t().contiguous() * _LOG2E  # (N, D)
        y = u.new_empty(length, bsz, d)
        entries = u.new_empty(max(1, -(-length // block)), bsz, n, d)
        abuf = u.new_empty(block, bsz, n, d)
        hbuf = torch.empty_like(abuf)
        rows_a, rows_h = abuf.unbind(0), hbuf.unbind(0)
        entries[0].zero_()
        for i, s0 in enumerate(range(0, length, block)):
            s1 = min(length, s0 + block)
            dt = _delta(rt[s0:s1], delta_bias, softplus)[0]
            a, h = _decay(dt, at2, abuf[: s1 - s0]), hbuf[: s1 - s0]
            torch.mul((dt * ut[s0:s1])[:, :, None, :], bt[s0:s1, :, :, None], out=h)
            last = _linear_scan_(a, h, entries[i], segments, rows=(rows_a[: s1 - s0], rows_h[: s1 - s0]))
            if i + 1 < len(entries):
                entries[i + 1] = last
            yb = _contract(ct[s0:s1], h, over="n", out=y[s0:s1])
            if D is not None:
                yb.addcmul_(ut[s0:s1], D)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, entries)
        ctx.plan, ctx.softplus = (block, segments), softplus
        return y.permute(1, 2, 0)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        with torch.autocast(gy.device.type, enabled=False):
            return _SelectiveScan._backward(ctx, gy.to(ctx.saved_tensors[0].dtype))

    @staticmethod
    def _backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, delta_bias, entries = ctx.saved_tensors
        block, segments = ctx.plan
        bsz, d, length = u.shape
        n = A.shape[1]
        ut, rt, bt, ct = u.permute(2, 0, 1), delta.permute(2, 0, 1), B.permute(2, 0, 1), C.permute(2, 0, 1)
        gyt = gy.permute(2, 0, 1)
        at = A.t().contiguous()
        at2 = at * _LOG2E
        gu, gdelta = u.new_empty(length, bsz, d), u.new_empty(length, bsz, d)
        gB, gC = u.new_empty(length, bsz, n), u.new_empty(length, bsz, n)
        # abuf row t+1 holds exp(Δ_{t+1} A), the decay of the adjoint recurrence at step t.
        abuf = u.new_empty(block + 1, bsz, n, d)
        hbuf = torch.empty_like(abuf)  # row 0 = the block's entry state, row t+1 = h_t
        lbuf = u.new_empty(block, bsz, n, d)
        gacc = torch.zeros_like(lbuf)  # Σ over blocks of dL/d(ΔA) ⊙ Δ, reduced to dL/dA at the end
        lam = u.new_zeros(bsz, n, d)  # λ at the first step of the following block
        rows_a, rows_h, rows_l = abuf.unbind(0), hbuf.unbind(0), lbuf.unbind(0)
        for i in range(len(entries) - 1, -1, -1):
            s0 = i * block
            s1 = min(length, s0 + block)
            s, e = s1 - s0, min(length, s1 + 1)
            a, hp, h, g = abuf[:s], hbuf[:s], hbuf[1 : s + 1], lbuf[:s]
            dt_e, dsig = _delta(rt[s0:e], delta_bias, ctx.softplus)
            dt = dt_e[:s]
            _decay(dt_e, at2, abuf[: e - s0])
            if e == s1:
                abuf[s].zero_()
            du = dt * ut[s0:s1]
            hbuf[0] = entries[i]
            torch.mul(du[:, :, None, :], bt[s0:s1, :, :, None], out=h)
            _linear_scan_(a, h, entries[i], segments, rows=(rows_a[:s], rows_h[1 : s + 1]))
            _contract(gyt[s0:s1], h, over="d", out=gC[s0:s1])
            torch.mul(gyt[s0:s1, :, None, :], ct[s0:s1, :, :, None], out=g)
            lam = _linear_scan_(abuf[1 : s + 1], g, lam, segments, reverse=True, rows=(rows_a[1 : s + 1], rows_l[:s]))
            lam_b = _contract(bt[s0:s1], g, over="n")  # Σ_n λ B: the gradient of Δ·u
            _contract(du, g, over="d", out=gB[s0:s1])
            w = a.mul_(g).mul_(hp)  # dL/d(ΔA) = λ_t ⊙ h_{t-1} ⊙ exp(Δ_t A)
            gacc[:s].addcmul_(w, dt[:, :, None, :])
            gd = torch.sum(torch.mul(w, at, out=hbuf[:s]), dim=2, out=gdelta[s0:s1]).addcmul_(ut[s0:s1], lam_b)
            if dsig is not None:
                gd.mul_(dsig[:s])
            gub = torch.mul(dt, lam_b, out=gu[s0:s1])
            if D is not None:
                gub.addcmul_(gyt[s0:s1], D)
        gA = gacc.sum((0, 1)).t()
        gD = None if D is None else (gy * u).sum((0, 2))
        gbias = None if delta_bias is None else gdelta.sum((0, 1))
        return (gu.permute(1, 2, 0), gdelta.permute(1, 2, 0), gA, gB.permute(1, 2, 0), gC.permute(1, 2, 0), gD,
                gbias, None)


def _delta(raw: Tensor, bias: Tensor | None, softplus: bool) -> tuple[Tensor, Tensor | None]:
    """Δ for a block of ``delta (S, B, D)``, and ``dΔ/d delta`` (sigmoid) when softplus is on."""
    x = raw if bias is None else raw + bias
    if not softplus:
        return x, None
    return _softplus(x), torch.sigmoid(x)
