"""TransMIL (Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for Whole Slide
Image Classification", NeurIPS 2021; official code github.com/szc19990412/TransMIL).

Per bag of ``n`` instances: ``fc`` (Linear → ReLU), square the sequence to ``s² = ceil(√n)²`` tokens by
appending copies of its first ``s² − n`` instances (kept from the official code), prepend a learned cls
token, then TransLayer → PPEG (on the ``s × s`` grid) → TransLayer → LayerNorm, and classify the cls token.
A TransLayer is pre-LN Nyström attention with a residual: ``x + Attn(LN(x))`` (8 heads, ``dim_head = dim/8``,
``dim/2`` landmarks, 6 pinv iterations, depthwise residual value convolution of length 33, dropout 0.1).

Padding: squaring, landmarks and the PPEG grid are computed from each bag's real length, and padded
tokens are masked out of attention (see ``layers/nystrom.py``), so batching never changes a bag's output.
Order-dependent (PPEG, segment landmarks): ``permutation_invariant=False``.

Instance scores are the cls token's Nyström attention to each instance, averaged over heads, from layer
``score_layer`` (default 0, the first layer, as MHIM-MIL uses). They are attention *weights* (no pre-softmax
form exists for Nyström attention; values can be slightly negative), taken at each instance's own position
(the square-filling copies are ignored). ``extras["attention"]`` is a list with one ``(B, H, N)`` per-head
cls-attention tensor per layer (-inf at padded positions).

Deviations from the official code: the Nyström deviations in ``layers/nystrom.py`` (landmarks over real
tokens only; per-bag pinv scale); optional dropout after ``fc`` (0 = official; MHIM uses 0.25).
"""
from __future__ import annotations

from math import isqrt

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import PPEG, InstanceMLP, NystromAttention
from milkit.types import BagFeatures

__all__ = ["TransLayer", "TransMIL"]


class TransLayer(nn.Module):
    """Pre-LN Nyström attention block ``x + Attn(LN(x))``; also returns the cls row ``(B, H, L)``."""

    def __init__(self, dim: int, heads: int, n_landmarks: int, pinv_iterations: int, residual_kernel: int,
                 dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads=heads, dim_head=dim // heads, n_landmarks=n_landmarks,
                                     pinv_iterations=pinv_iterations, residual_kernel=residual_kernel,
                                     dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out, rows = self.attn.attend(self.norm(x), mask, query_rows=[0])
        return x + out, rows[:, :, 0]


class TransMIL(MILModel):
    """TransMIL.

    Args:
        in_dim: instance feature dimension ``D``.
        num_classes: number of output logits ``C``.
        dim: token width after ``fc`` (512).
        heads: attention heads (8).
        n_landmarks: Nyström landmarks (default ``dim // 2``).
        pinv_iterations: Newton–Schulz iterations (6).
        residual_kernel: length of the residual value convolution (33; 0 disables).
        attn_dropout: dropout after each attention output projection (0.1).
        dropout: dropout after ``fc`` (0.0).
        score_layer: which layer's cls attention gives ``instance_scores`` (0 or 1).
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 512, heads: int = 8, n_landmarks: int | None = None,
                 pinv_iterations: int = 6, residual_kernel: int = 33, attn_dropout: float = 0.1,
                 dropout: float = 0.0, score_layer: int = 0) -> None:
        super().__init__(in_dim, num_classes)
        if dim % heads:
            raise ConfigError(f"dim ({dim}) must be divisible by heads ({heads})")
        if score_layer not in (0, 1):
            raise ConfigError(f"score_layer must be 0 or 1, got {score_layer}")
        self.score_layer = score_layer
        self.embed = InstanceMLP(in_dim, (dim,), act="relu", dropout=dropout)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        layer = dict(heads=heads, n_landmarks=n_landmarks or dim // 2, pinv_iterations=pinv_iterations,
                     residual_kernel=residual_kernel, dropout=attn_dropout)
        self.layer1 = TransLayer(dim, **layer)
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(dim, **layer)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        b, n, d = h.shape
        lengths = mask.sum(1)
        sides = [isqrt(max(int(k), 1) - 1) + 1 for k in lengths.tolist()]  # ceil(sqrt(n))
        grid_len = max(s * s for s in sides)
        # squared sequence of bag i: its instances 0..n_i-1, then copies of instances 0..s_i²-n_i-1
        pos = torch.arange(grid_len, device=h.device)
        src = pos.unsqueeze(0) % lengths.clamp_min(1).unsqueeze(1)  # (B, L)
        tokens = torch.gather(h, 1, src.unsqueeze(-1).expand(-1, -1, d))  # (B, L, d)
        squares = torch.tensor([s * s for s in sides], device=h.device)
        seq_mask = torch.cat([mask.new_ones(b, 1), pos.unsqueeze(0) < squares.unsqueeze(1)], dim=1)  # (B, 1 + L)
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)  # (B, 1 + L, d)

        x, attn1 = self.layer1(x, seq_mask)
        x = torch.cat([x[:, :1], self.pos_layer(x[:, 1:], sides)], dim=1)
        x, attn2 = self.layer2(x, seq_mask)
        z = self.norm(x[:, 0])

        # cls → instance attention at the instances' own positions, (B, H, N) per layer
        attention = [F.pad(a[..., 1 : 1 + n], (0, max(0, n - grid_len))).masked_fill(~mask[:, None], float("-inf"))
                     for a in (attn1, attn2)]
        scores = attention[self.score_layer].mean(1)
        return BagFeatures(bag_embedding=z, instance_scores=scores, extras={"attention": attention})

    def instance_contributions(self, h: Tensor, mask: Tensor, feats: BagFeatures) -> Tensor:
        """Per-instance share of the first layer's cls output, ``(B, N, D)``: the cls token's attention to each
        instance times that instance's values, per head, through the layer's output projection (MHIM-MIL v2's
        class-aware score for TransMIL, ``get_pseudo_score_trans``; classified by the head afterwards). Values
        are per token, so they are recomputed from ``h`` without another attention pass."""
        attn = feats.extras["attention"][0].masked_fill(~mask[:, None], 0.0)  # (B, H, N)
        layer = self.layer1.attn
        x = self.layer1.norm(h).masked_fill(~mask.unsqueeze(-1), 0.0)
        inner = layer.heads * layer.dim_head  # to_qkv has no bias: the values are its last third alone
        v = F.linear(x, layer.to_qkv.weight[2 * inner:]).unflatten(-1, (layer.heads, layer.dim_head))  # (B, N, H, d)
        return layer.to_out((attn.transpose(1, 2).unsqueeze(-1) * v).flatten(2))


_TINY = {"dim": 16, "heads": 2, "n_landmarks": 4, "residual_kernel": 3}


@register_model("transmil", permutation_invariant=False, tiny_kwargs=_TINY,
                description="TransMIL: Nyström transformer + PPEG (Shao et al. 2021)")
def transmil(in_dim: int, num_classes: int, **kw) -> TransMIL:
    return TransMIL(in_dim, num_classes, **kw)
