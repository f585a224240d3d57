"""R²T: the Re-embedded Regional Transformer encoder (Tang et al., "Feature Re-Embedding: Towards Foundation
Model-Level Performance in Computational Pathology", CVPR 2024; official code DearCaat/RRT-MIL @ 7ecbdfb).

R²T re-embeds the instance features of a bag online, between a MIL model's input projection and its
aggregator (paper eq. 4, upstream ``RRTEncoder``)::

    Ẑ = R-MSA(LN(H)) + H          regional MSA with EPEG, inside each of the S×S regions of the folded bag
    Z = CR-MSA(LN(Ẑ)) + Ẑ         k representatives per region attend across regions and are spread back
    out = LN(Z [+ H])             final norm (``all_shortcut`` adds the encoder input first)

Defaults are the official ones: 1 R-MSA layer (upstream ``n_trans_layers=2`` = R-MSA layers + 1), 8 regions
per side, 8 heads of ``dim/8``, qkv bias, EPEG k=15 on the logits, projection dropout 0.1, no FFN, no
DropPath; CR-MSA with k=3, 8 heads, a linear Φ (or the ``crmsa_mlp`` variant), always 8 regions per side
(upstream never passes ``region_num`` to it; ``crmsa_region_num=None`` follows R-MSA instead); xavier-normal
Linear/conv weights with zero biases and a kaiming-uniform Φ, as upstream's ``initialize_weights``.

Deviations (on purpose):
* **Masking.** Upstream appends unmasked zero rows to fill the square; they act as keys and values (through
  the qkv bias), enter EPEG's convolution and CR-MSA's softmaxes and min–max, and regions made only of them
  are attended to across regions. Here padding — the square's fill and a batch's padding — never attends,
  is never attended, is zero in EPEG's input, and is excluded from every CR-MSA statistic. A bag alone and
  padded inside a batch give the same output; upstream only supports batch size 1.
* **Geometry per bag.** Each bag is folded from its own real length (upstream: the batch length).
* **Memory.** EPEG runs on the queries (exactly equivalent, see ``epeg.py``) and attention uses
  ``F.scaled_dot_product_attention``, so no ``L × L`` logit map is stored: memory is linear in N. CR-MSA's
  spread-back is a batched matmul instead of upstream's ``(regions, k, P, C)`` einsum intermediates.
* Not ported (upstream ablations): Nyström in-region attention, PEG/PPEG/SINCOS, 2-D or value-side EPEG,
  FFN, DropPath, ``min_region_num``/``min_region_ratio``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models.layers.epeg import EPEG
from milkit.models.layers.masked import full_mask, masked_softmax
from milkit.models.layers.regions import RegionLayout

__all__ = ["RegionAttention", "RMSA", "CRMSA", "RRTEncoder", "init_linear_xavier"]


class RegionAttention(nn.Module):
    """Multi-head self-attention within groups of tokens, key-masked, optionally with EPEG.

    Shape:
        x: ``(G, L, C)``; valid: ``(G, L)`` bool or None → ``(G, L, C)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, epeg_k: int = 0, epeg_bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(f"R²T: embedding width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.pe = EPEG(num_heads, epeg_k, bias=epeg_bias) if epeg_k else None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        g, length, c = x.shape
        q, k, v = self.qkv(x).view(g, length, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if valid is not None and bool(valid.all()):
            valid = None
        if self.pe is not None:
            q = self.pe(q, valid)
        bias = None
        if valid is not None:  # additive finfo.min on padded keys (an all-padding group stays finite)
            bias = torch.zeros(valid.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~valid, torch.finfo(q.dtype).min)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_drop if self.training else 0.0)  # (G, h, L, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(g, length, c)))


class RMSA(nn.Module):
    """Regional MSA: attention inside each region of the folded bag, EPEG on the logits.

    Shape: ``x (B, N, C)`` with its ``RegionLayout`` → ``(B, N, C)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, epeg_k: int = 15, **attn_kw) -> None:
        super().__init__()
        self.attn = RegionAttention(dim, num_heads, epeg_k=epeg_k, **attn_kw)

    def forward(self, x: Tensor, layout: RegionLayout) -> Tensor:
        b, r, p = layout.shape
        y = self.attn(layout.gather(x).view(b * r, p, -1), layout.valid.view(b * r, p))
        return layout.scatter(y.view(b, r, p, -1))


class CRMSA(nn.Module):
    """Cross-region MSA: per region, ``k`` representatives (softmax over the region's instances of ``x·Φ``)
    attend to the same-index representatives of the other regions, and are spread back to the instances
    with min–max-normalised × softmax-over-``k`` weights (paper eqs. 6–8).

    Shape: ``x (B, N, C)`` with its ``RegionLayout`` → ``(B, N, C)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, k: int = 3, mlp: bool = False, **attn_kw) -> None:
        super().__init__()
        self.k = k
        if mlp:
            self.phi: nn.Module | nn.Parameter = nn.Sequential(
                nn.Linear(dim, dim // 4, bias=False), nn.Tanh(), nn.Linear(dim // 4, k, bias=False))
        else:
            self.phi = nn.Parameter(torch.empty(dim, k))
            nn.init.kaiming_uniform_(self.phi, a=math.sqrt(5))
        self.attn = RegionAttention(dim, num_heads, epeg_k=0, **attn_kw)

    def forward(self, x: Tensor, layout: RegionLayout) -> Tensor:
        b, r, p = layout.shape
        xr = layout.gather(x)  # (B, R, P, C)
        valid = layout.valid.unsqueeze(-1)  # (B, R, P, 1)
        logits = xr @ self.phi if isinstance(self.phi, nn.Parameter) else self.phi(xr)  # (B, R, P, k)
        combine = masked_softmax(logits, valid, dim=2)  # over the region's instances
        dispatch = logits.softmax(dim=-1)  # over the k representatives
        # min–max over the real instances only: empty slots take a value inside the real range (0 for an
        # empty region), which keeps every term finite without infinities
        filled = logits.masked_fill(~valid, 0.0)
        lo = torch.where(valid, logits, filled.amax(2, keepdim=True)).amin(2, keepdim=True)  # (B, R, 1, k)
        hi = torch.where(valid, logits, filled.amin(2, keepdim=True)).amax(2, keepdim=True)
        minmax = (logits - lo) / (hi - lo + 1e-8)
        reps = combine.transpose(2, 3) @ xr  # (B, R, k, C)
        reps = reps.transpose(1, 2).reshape(b * self.k, r, -1)  # one sequence of regions per (bag, k)
        reps = self.attn(reps, layout.valid.any(-1).repeat_interleave(self.k, 0))  # empty regions masked
        reps = reps.view(b, self.k, r, -1).transpose(1, 2)  # (B, R, k, C)
        return layout.scatter((minmax * dispatch) @ reps)  # (B, R, P, C) → (B, N, C)


class _PreNorm(nn.Module):
    """``x + f(LN(x))`` (upstream ``TransLayer`` without FFN and DropPath)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor, layout: RegionLayout) -> Tensor:
        return x + self.fn(self.norm(x), layout)


class RRTEncoder(nn.Module):
    """R²T re-embedding block; a drop-in ``MILModel.reembed``: ``(h (B, N, C), mask (B, N)) → (B, N, C)``.

    Args:
        dim: embedding width ``C`` (must be divisible by the head counts).
        num_heads: R-MSA heads. region_num: regions per side. region_size: region side (overrides
            ``region_num`` when set, as upstream). num_rmsa_layers: stacked R-MSA layers.
        epeg_k: EPEG kernel (0 = no EPEG). epeg_bias: keep upstream's inert EPEG bias.
        qkv_bias, attn_drop, proj_drop: attention settings (upstream ``trans_dropout`` = ``proj_drop``).
        cr_msa: add the CR-MSA layer. crmsa_k: representatives per region. crmsa_heads: CR-MSA heads.
        crmsa_mlp: MLP Φ instead of a linear one. crmsa_region_num: CR-MSA regions per side
            (upstream: always 8; None = the R-MSA geometry).
        all_shortcut: add the encoder input before the final norm.

    Padded positions of the output are zero.
    """

    def __init__(self, dim: int = 512, num_heads: int = 8, region_num: int = 8, region_size: int | None = None,
                 num_rmsa_layers: int = 1, epeg_k: int = 15, epeg_bias: bool = True, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.1, cr_msa: bool = True, crmsa_k: int = 3,
                 crmsa_heads: int = 8, crmsa_mlp: bool = False, crmsa_region_num: int | None = 8,
                 all_shortcut: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.geometry = (region_num, region_size or None)
        self.cr_geometry = self.geometry if crmsa_region_num is None else (crmsa_region_num, None)
        self.all_shortcut = all_shortcut
        attn_kw = {"qkv_bias": qkv_bias, "attn_drop": attn_drop, "proj_drop": proj_drop}
        self.layers = nn.ModuleList(
            _PreNorm(dim, RMSA(dim, num_heads, epeg_k=epeg_k, epeg_bias=epeg_bias, **attn_kw))
            for _ in range(num_rmsa_layers))
        self.cr_msa = _PreNorm(dim, CRMSA(dim, crmsa_heads, k=crmsa_k, mlp=crmsa_mlp, **attn_kw)) if cr_msa else None
        self.norm = nn.LayerNorm(dim)
        self.apply(init_linear_xavier)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        if h.shape[-1] != self.dim:
            raise ConfigError(f"R²T encoder was built for width {self.dim} but receives embeddings of width "
                              f"{h.shape[-1]} (check the aggregator's embed_dim)")
        mask = full_mask(h) if mask is None else mask.bool()
        layout = RegionLayout.build(mask, *self.geometry)
        x = h
        for layer in self.layers:
            x = layer(x, layout)
        if self.cr_msa is not None:
            cr_layout = layout if self.cr_geometry == self.geometry else RegionLayout.build(mask, *self.cr_geometry)
            x = self.cr_msa(x, cr_layout)
        if self.all_shortcut:
            x = x + h
        return self.norm(x).masked_fill(~mask.unsqueeze(-1), 0.0)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, region_num/size={self.geometry}, cr_msa region_num/size={self.cr_geometry}"


def init_linear_xavier(m: nn.Module) -> None:
    """Upstream ``initialize_weights``: xavier-normal Linear weights, zero biases (LayerNorm keeps 1/0)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
