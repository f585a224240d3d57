"""Incremental low-rank adapters for continual learning (plain sequential LoRA and CoMEL's OWLoRA).

``AdaptedLinear`` replaces an ``nn.Linear`` in place (same ``weight``/``bias`` names, so state dicts of the plain
model still load) and computes ``W x + b + Σ_j U_j diag(s_j) D_j x`` over its adapters ``j``. An adapter
``D (r, in)``, ``U (out, r)``, ``s (r,)`` starts as ``D ~ N(0, 1/r²)``, ``U = 0``, ``s = 1`` (the official code's
weighted LoRA layer), so adding one does not change the output.

OWLoRA additions (all on ``AdaptedLinear``):
* ``compress(energy)``: SVD ``W = U S Vᵀ``; keep the smallest d whose top-d squared singular values hold at least
  ``energy`` of the total, replace ``W`` by its rank-d truncation and keep ``U_d``/``V_d`` as the first task's bases.
* ``orthogonality_penalty()``: ``(‖D Dᵀ − I‖²_F + ‖Uᵀ U − I‖²_F) / r²`` for the newest adapter.
* ``project_gradients()``: removes from the newest adapter's gradients their components in the input subspace
  (rows of earlier ``D_j`` and ``V_d``) and the output subspace (columns of earlier ``U_j`` and ``U_d``).

Upstream bugs not copied: the official code stores the SVD "initial basis" as a fresh adapter with *random* D and
*zero* U (the SVD factors are never copied), so its projection is against a random input subspace and a no-op on
the output side; here the bases are ``V_d`` and ``U_d``. Upstream also subtracts a *sum* of per-adapter products
``D_jᵀD_j``, which is not the projector onto the union of non-orthonormal subspaces; here the projector is built
from an orthonormal basis of the union (SVD, rank by a relative tolerance), so a projected gradient is exactly
orthogonal to every earlier subspace.
"""
from __future__ import annotations

import fnmatch
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LoRAAdapter", "AdaptedLinear", "inject_adapters", "adapted_layers", "orthonormal_basis",
           "energy_rank", "rank_for"]


class LoRAAdapter(nn.Module):
    """Weighted low-rank update ``x ↦ U (s ⊙ (D x))``. Shapes: ``down (r, in)``, ``up (out, r)``, ``scale (r,)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.down = nn.Parameter(torch.randn(rank, in_features, **kw) / rank)
        self.up = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.scale = nn.Parameter(torch.ones(rank, **kw))

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.down) * self.scale, self.up)

    def delta_weight(self) -> Tensor:
        """``U diag(s) D``, ``(out, in)``."""
        return (self.up * self.scale) @ self.down

    def extra_repr(self) -> str:
        return f"in={self.down.shape[1]}, out={self.up.shape[0]}, rank={self.rank}"


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """Smallest d ≥ 1 whose top-d squared singular values hold at least ``energy`` of the total."""
    sq = singular_values.double() ** 2
    frac = sq.cumsum(0) / sq.sum().clamp_min(torch.finfo(torch.float64).tiny)
    return min(int((frac < energy - 1e-12).sum()) + 1, len(sq))


def orthonormal_basis(columns: Sequence[Tensor], rtol: float = 1e-5) -> Tensor | None:
    """Orthonormal basis ``(dim, k)`` of the span of the given column blocks, or None when they are empty."""
    mats = [c for c in columns if c.numel()]
    if not mats:
        return None
    a = torch.cat(mats, dim=1).double()
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    keep = s > rtol * s.max().clamp_min(torch.finfo(torch.float64).tiny)
    return u[:, keep].to(columns[0].dtype)


class AdaptedLinear(nn.Module):
    """A linear layer with a growing list of low-rank adapters (all active in the forward pass)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.adapters = nn.ModuleList()
        # bases of the compressed first-task weight: V_d (in, d) and U_d (out, d); empty until compress()
        self.register_buffer("basis_in", base.weight.new_zeros(self.in_features, 0))
        self.register_buffer("basis_out", base.weight.new_zeros(self.out_features, 0))
        # orthonormal bases of everything learned before the newest adapter (recomputed in add_adapter)
        self.register_buffer("protect_in", base.weight.new_zeros(self.in_features, 0), persistent=False)
        self.register_buffer("protect_out", base.weight.new_zeros(self.out_features, 0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        for adapter in self.adapters:
            out = out + adapter(x)
        return out

    @property
    def newest(self) -> LoRAAdapter | None:
        return self.adapters[-1] if len(self.adapters) else None

    @torch.no_grad()
    def compress(self, energy: float) -> int:
        """Replace ``W`` by its SVD truncation keeping ``energy`` of ‖W‖²_F; return the kept rank d."""
        u, s, vh = torch.linalg.svd(self.weight.double(), full_matrices=False)
        d = energy_rank(s, energy)
        self.weight.copy_(((u[:, :d] * s[:d]) @ vh[:d]).to(self.weight.dtype))
        self.basis_out = u[:, :d].to(self.weight.dtype).contiguous()
        self.basis_in = vh[:d].T.to(self.weight.dtype).contiguous()
        return d

    @torch.no_grad()
    def add_adapter(self, rank: int, protect_basis: bool = True) -> LoRAAdapter:
        """Freeze the existing adapters, record the subspaces they span (with the compressed weight's bases when
        ``protect_basis``), and append a new trainable adapter."""
        for adapter in self.adapters:
            adapter.requires_grad_(False)
        empty_in, empty_out = self.weight.new_zeros(self.in_features, 0), self.weight.new_zeros(self.out_features, 0)
        base_in, base_out = (self.basis_in, self.basis_out) if protect_basis else (empty_in, empty_out)
        q_in = orthonormal_basis([base_in] + [a.down.T for a in self.adapters])
        q_out = orthonormal_basis([base_out] + [a.up for a in self.adapters])
        self.protect_in = empty_in if q_in is None else q_in
        self.protect_out = empty_out if q_out is None else q_out
        adapter = LoRAAdapter(self.in_features, self.out_features, rank, self.weight.device, self.weight.dtype)
        self.adapters.append(adapter)
        return adapter

    @torch.no_grad()
    def project_gradients(self) -> None:
        """``g_D ← g_D (I − Q_in Q_inᵀ)``, ``g_U ← (I − Q_out Q_outᵀ) g_U`` for the newest adapter."""
        adapter = self.newest
        if adapter is None:
            return
        if adapter.down.grad is not None and self.protect_in.shape[1]:
            g = adapter.down.grad
            g.sub_((g @ self.protect_in) @ self.protect_in.T)
        if adapter.up.grad is not None and self.protect_out.shape[1]:
            g = adapter.up.grad
            g.sub_(self.protect_out @ (self.protect_out.T @ g))

    def orthogonality_penalty(self) -> Tensor:
        """``(‖D Dᵀ − I‖²_F + ‖Uᵀ U − I‖²_F) / r²`` of the newest adapter (0 without adapters)."""
        adapter = self.newest
        if adapter is None:
            return self.weight.new_zeros(())
        eye = torch.eye(adapter.rank, device=self.weight.device, dtype=self.weight.dtype)
        down = adapter.down @ adapter.down.T - eye
        up = adapter.up.T @ adapter.up - eye
        return (down.pow(2).sum() + up.pow(2).sum()) / adapter.rank ** 2

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, basis_rank={self.basis_in.shape[1]}")


def inject_adapters(model: nn.Module, exclude: Sequence[str] = ("head",)) -> dict[str, AdaptedLinear]:
    """Wrap every ``nn.Linear`` with more than one output, outside the ``exclude`` prefixes, in an ``AdaptedLinear``.

    Idempotent: already wrapped layers are returned as they are. Returns ``{qualified name: layer}``.
    """
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and mod.out_features > 1
               and not any(name == p or name.startswith(p + ".") for p in exclude)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, AdaptedLinear(mod))
    return dict(adapted_layers(model))


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    """``(qualified name, layer)`` for every ``AdaptedLinear`` in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, AdaptedLinear))


def rank_for(name: str, rank: int, overrides: Mapping[str, int] | None = None) -> int:
    """The adapter rank of layer ``name``: the first glob in ``overrides`` that matches it, else ``rank``."""
    for pattern, r in (overrides or {}).items():
        if fnmatch.fnmatch(name, pattern):
            return int(r)
    return int(rank)
