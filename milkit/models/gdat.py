"""GDAT: Grouped Double Attention Transformer (CoMEL, Lee et al., ICCV 2025; official code calls it "CDAT").

    x (B, N, D) ─ Linear → ReLU → Dropout ─▶ h (B, N, E) ─ GDAT blocks ×L ─▶ H
                ─ attention pooling ─▶ z = aᵀH (B, E) ─ head ─▶ logits (B, C)

One GDAT block is pre-LN: ``h ← h + GroupedDoubleAttention(LN h)``, ``h ← h + MLP(LN h)`` (E → rE → E, GELU).
Grouped double attention, per bag of real length n:

1. Group tokens. The real instances, in bag order, are laid on a square grid whose side is ⌈√n⌉ rounded up to a
   multiple of ``region_size`` r; instance i (grid row ρ, column κ) belongs to group (ρ mod r)·r + (κ mod r). Group
   token g_j = the mean of its instances, so there are up to m = r² groups (a strided grouping, as in the code).
2. Groups attend to instances, ``V_g = softmax(Q_g Kᵀ/√d) V``; instances attend to groups,
   ``Y = softmax(Q K_gᵀ/√d) V_g``. One shared ``qkv`` projection gives Q, K, V (instances) and Q_g, K_g (groups).
   Cost O(n·m·E) instead of O(n²E).
3. Value shortcut ``Y ← Y + 0.1·V``, heads merged, output projection.

Instance scores are the raw pooling-attention logits; ``extras['instance_embeddings']`` holds H (B, N, E), which
bag-prototype pseudo-labelling (``milkit.continual.bppl``) needs.

Deviations from the official code, on purpose:
* Group tokens and the keys/values are computed from real instances only. Upstream zero-pads the bag to the grid,
  averages the zero rows into the group tokens and keeps them as keys/values; it also averages across the batch
  axis (it only runs with batch size 1). Here empty groups are masked out, so a bag gives the same output alone
  or padded in a batch.
* Upstream adds learnable per-head *scalar* biases (``an_bias``, ``na_bias``, shape (1, heads, 1, 1)) inside both
  softmaxes. A constant added to every logit of a softmax changes nothing, so they have no effect and no gradient;
  they are omitted.
* The unused ``v_proj`` layer and the RRT-MIL leftovers (``epeg``, ``crmsa``) are not reproduced.
Defaults follow the code: E = 512, 2 blocks, 8 heads, r = 16, MLP ratio 4, dropout 0.25 / 0.1, no qkv bias,
LayerNorm eps 1e-6, attention pooling 512 → 256 (tanh, no biases) → 1 (the research note says 128; the code's
``Attention`` class uses 256).
"""
from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import AttentionPool, InstanceMLP, masked_softmax
from milkit.types import BagFeatures

__all__ = ["GDAT", "GDATBlock", "GroupedDoubleAttention", "group_index"]


def group_index(mask: Tensor, region_size: int) -> Tensor:
    """Group of every real instance, ``(B, N)`` long in ``[0, r²)``; padded positions get ``r²``.

    Positions are counted among real instances only, so padding never shifts the grid.
    """
    pos = mask.long().cumsum(dim=1) - 1  # rank of each real instance within its bag
    n = mask.sum(dim=1, keepdim=True).clamp_min(1)
    side = torch.sqrt(n.double()).floor().long()
    side = side + (side * side < n).long()  # ⌈√n⌉, exact for integers
    side = side + (-side) % region_size
    row, col = pos // side, pos % side
    groups = (row % region_size) * region_size + col % region_size
    return groups.masked_fill(~mask, region_size * region_size)


class GroupedDoubleAttention(nn.Module):
    """Groups → instances → groups attention with a value shortcut. ``(B, N, E), mask (B, N) → (B, N, E)``."""

    def __init__(self, dim: int, num_heads: int = 8, region_size: int = 16, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, shortcut: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"gdat: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.region_size, self.shortcut = num_heads, region_size, shortcut
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def group_tokens(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mean of each group's real instances ``(B, m, E)`` and which groups are non-empty ``(B, m)``."""
        b, _, e = x.shape
        m = self.region_size ** 2
        idx = group_index(mask, self.region_size).unsqueeze(-1)  # (B, N, 1)
        sums = x.new_zeros(b, m + 1, e).scatter_add_(1, idx.expand(-1, -1, e), x)
        counts = x.new_zeros(b, m + 1, 1).scatter_add_(1, idx, mask.unsqueeze(-1).to(x.dtype))
        return sums[:, :m] / counts[:, :m].clamp_min(1.0), counts[:, :m, 0] > 0

    def _heads(self, t: Tensor) -> Tensor:
        b, n, e = t.shape
        return t.reshape(b, n, self.num_heads, e // self.num_heads).transpose(1, 2)  # (B, H, n, d)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, e = x.shape
        g, g_mask = self.group_tokens(x, mask)
        q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        q_g, k_g, _ = (self._heads(t) for t in self.qkv(g).chunk(3, dim=-1))
        # groups attend to the real instances: (B, H, m, N) @ (B, H, N, d)
        a_gn = masked_softmax(q_g @ k.transpose(-2, -1) * self.scale, mask[:, None, None, :])
        v_g = self.attn_drop(a_gn) @ v
        # instances attend to the non-empty groups: (B, H, N, m) @ (B, H, m, d)
        a_ng = masked_softmax(q @ k_g.transpose(-2, -1) * self.scale, g_mask[:, None, None, :])
        y = self.attn_drop(a_ng) @ v_g + self.shortcut * v
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, e)))


class GDATBlock(nn.Module):
    """Pre-LN transformer block with grouped double attention."""

    def __init__(self, dim: int, num_heads: int, region_size: int, mlp_ratio: float = 4.0, drop: float = 0.1,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GroupedDoubleAttention(dim, num_heads, region_size, qkv_bias, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class GDATEncoder(nn.Module):
    """A stack of GDAT blocks used as the model's ``reembed`` stage: ``(h, mask) -> h``."""

    def __init__(self, dim: int, depth: int, **block_kw) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(GDATBlock(dim, **block_kw) for _ in range(depth))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h, mask)
        return h


def _xavier_init(m: nn.Module) -> None:
    """The official code's initialisation: Xavier-normal linear weights, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class GDAT(MILModel):
    """Grouped Double Attention Transformer with attention pooling.

    Args:
        in_dim: instance feature dimension ``D``.
        num_classes: number of logits (the continual runner replaces the head with per-task heads).
        dim: model width ``E``.
        depth: number of GDAT blocks.
        num_heads: attention heads.
        region_size: r; up to r² group tokens.
        mlp_ratio: MLP hidden width / ``E``.
        dropout: dropout after the input projection.
        drop: dropout in the blocks (attention output and MLP).
        qkv_bias: bias in the shared qkv projection.
        attn_dim: hidden width of the attention pooling.
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 512, depth: int = 2, num_heads: int = 8,
                 region_size: int = 16, mlp_ratio: float = 4.0, dropout: float = 0.25, drop: float = 0.1,
                 qkv_bias: bool = False, attn_dim: int = 256) -> None:
        super().__init__(in_dim, num_classes)
        if region_size < 1:
            raise ConfigError(f"gdat: region_size must be >= 1, got {region_size}")
        self.embed = InstanceMLP(in_dim, (dim,), act="relu", dropout=dropout)
        self.reembed = GDATEncoder(dim, depth, num_heads=num_heads, region_size=region_size, mlp_ratio=mlp_ratio,
                                   drop=drop, qkv_bias=qkv_bias)
        self.pool = AttentionPool(dim, attn_dim, act="tanh", bias=False)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_xavier_init)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        z, logits = self.pool(h, mask)
        return BagFeatures(bag_embedding=z, instance_scores=logits, extras={"instance_embeddings": h})


@register_model("gdat", permutation_invariant=False,
                tiny_kwargs={"dim": 16, "depth": 1, "num_heads": 2, "region_size": 2, "mlp_ratio": 2.0,
                             "attn_dim": 8},
                description="Grouped Double Attention Transformer (CoMEL, Lee et al. 2025)")
def gdat(in_dim: int, num_classes: int, **kw) -> GDAT:
    return GDAT(in_dim, num_classes, **kw)
