"""Mamba-1 mixer (Gu & Dao, 2023) in pure PyTorch, with the parameter names and shapes of ``mamba_ssm.Mamba``.

    x (B, L, d_model) ─ in_proj ─▶ [x | z] (B, L, 2·d_inner)
    x ─ causal depthwise conv (k = d_conv) ─ SiLU ─ x_proj ─▶ [dt (dt_rank) | B (N) | C (N)]
    Δ = softplus(dt_proj.weight·dt + dt_proj.bias);  y = selective_scan(x, Δ, A = −exp(A_log), B, C, D)
    out = out_proj(y ⊙ SiLU(z))

A state dict therefore moves between this module and ``mamba_ssm.Mamba`` in both directions (keys
``in_proj.weight, conv1d.weight, conv1d.bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D,
out_proj.weight``). ``DualMamba`` adds a second scan branch with its own ``*_b`` parameters (the names of
MambaMIL's ``SRMamba``/``BiMamba``) that reads the tokens in another order; both branches share ``in_proj``,
the gate ``z`` and ``out_proj`` and are summed before ``out_proj``.

The depthwise convolution (:func:`~milkit.models.layers.causal_conv.causal_depthwise_conv1d`, which also reads the
second branch's tokens in its order) and the gate (:func:`~milkit.models.layers.gate.gated_sum`) run as fused C
kernels on the CPU and as PyTorch ops elsewhere; the scan is
:func:`~milkit.models.layers.selective_scan.selective_scan`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.models.layers import cpu_kernels
from milkit.models.layers.causal_conv import causal_conv_branches, causal_depthwise_conv1d
from milkit.models.layers.gate import gated_sum
from milkit.models.layers.selective_scan import selective_scan
from milkit.models.layers.ssm_kernel import kernel_ssm

__all__ = ["Mamba", "DualMamba"]


def _dt_bias(d_inner: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """Mamba's Δ bias: ``softplus(bias)`` log-uniform in ``[dt_min, dt_max]`` (inverse softplus of a sample)."""
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba(nn.Module):
    """Mamba-1 mixer ``(B, L, d_model) → (B, L, d_model)``; arguments and defaults as ``mamba_ssm.Mamba``.

    ``scan_impl`` is passed to :func:`~milkit.models.layers.selective_scan.selective_scan`
    (``"auto"``: mamba-ssm's kernel on CUDA when installed, milkit's scan otherwise).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 scan_impl: str = "auto") -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_init, self.dt_std = dt_init, self.dt_rank**-0.5 * dt_scale
        self.scan_impl = scan_impl
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        # conv1d holds the (d_inner, 1, d_conv) depthwise kernel and its default init; forward uses
        # causal_depthwise_conv1d.
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = self._branch(conv_bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_dt_bias()

    def _branch(self, conv_bias: bool) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]:
        """One scan branch's parameters with Mamba's initialisation (S4D-real A, D = 1, scaled dt_proj)."""
        di = self.d_inner
        conv = nn.Conv1d(di, di, self.d_conv, groups=di, padding=self.d_conv - 1, bias=conv_bias)
        x_proj = nn.Linear(di, self.dt_rank + 2 * self.d_state, bias=False)
        dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        if self.dt_init == "constant":
            nn.init.constant_(dt_proj.weight, self.dt_std)
        elif self.dt_init == "random":
            nn.init.uniform_(dt_proj.weight, -self.dt_std, self.dt_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got '{self.dt_init}'")
        dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        a_log = nn.Parameter(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(di, 1))
        d = nn.Parameter(torch.ones(di))
        a_log._no_weight_decay = True  # type: ignore[attr-defined]
        d._no_weight_decay = True  # type: ignore[attr-defined]
        return conv, x_proj, dt_proj, a_log, d

    @torch.no_grad()
    def reset_dt_bias(self) -> None:
        """Mamba's Δ-bias init; every branch gets the same sample (as MambaMIL's two-branch mixers do)."""
        bias = _dt_bias(self.d_inner, *self._dt_range)
        for m in self.modules():
            if isinstance(m, nn.Linear) and getattr(m.bias, "_no_reinit", False):
                m.bias.copy_(bias)

    def ssm(self, u: Tensor, x_proj: nn.Linear, dt_proj: nn.Linear, A_log: Tensor, D: Tensor,
            out_order: Tensor | None = None) -> Tensor:
        """x_proj → selective scan (with the D skip, without the gate) of the conv's output ``u (B, L, d_inner)``;
        ``out_order``: step t's output goes to position ``out_order[:, t]``."""
        A = -torch.exp(A_log.float())
        if self.scan_impl in ("auto", "cpu") and cpu_kernels.usable(u, x_proj.weight, dt_proj.weight):
            return kernel_ssm(u, x_proj.weight, dt_proj.weight, dt_proj.bias, A, D, self.d_state, out_order)
        dt, B, C = x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight)  # the bias enters the scan as delta_bias, as in mamba_inner_fn
        y = selective_scan(u.mT, delta.mT, A, B.mT, C.mT, D.float(),
                           delta_bias=dt_proj.bias.float(), delta_softplus=True, impl=self.scan_impl,
                           out_order=out_order)
        return y.mT

    def forward(self, hidden: Tensor) -> Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        u = causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias, silu=True)
        y = self.ssm(u, self.x_proj, self.dt_proj, self.A_log, self.D)
        return self.out_proj(gated_sum(y, z))


class DualMamba(Mamba):
    """Two-branch Mamba mixer (MambaMIL's SR-Mamba and Bi-Mamba): ``out_proj((y_f + ψ⁻¹(y_r)) ⊙ SiLU(z))``.

    ``y_f`` scans the tokens in their order; ``y_r`` scans them in ``order`` (``(B, L)`` long, a permutation
    per bag) with its own ``conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b``; its scan writes step ``t`` back at
    token ``order[:, t]`` (ψ⁻¹). Gating after the inverse equals MambaMIL's gating of the permuted ``z``, since the
    gate is per token.
    """

    def __init__(self, d_model: int, **kw) -> None:
        super().__init__(d_model, **kw)
        self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = self._branch(self.conv1d.bias is not None)
        self.reset_dt_bias()

    def forward(self, hidden: Tensor, order: Tensor | None = None) -> Tensor:
        if order is None:
            raise ValueError("DualMamba needs the token order of its second branch")
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        u, u_r = causal_conv_branches(x, [(self.conv1d.weight, self.conv1d.bias, None),
                                          (self.conv1d_b.weight, self.conv1d_b.bias, order)], silu=True)
        y = self.ssm(u, self.x_proj, self.dt_proj, self.A_log, self.D)
        # the reordered scan writes its output back in the tokens' order
        y_r = self.ssm(u_r, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, out_order=order)
        return self.out_proj(gated_sum(y, z, y_r))
