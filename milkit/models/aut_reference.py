"""The reference architectures of Raff & Holt's official notebook that milkit has no twin for.

* ``aut_attention`` (notebook class ``MIL_Pool``): 3 × [Linear → LeakyReLU(0.2) → Dropout(0.5)] at width 128;
  additive (Bahdanau) attention ``a_n = softmax_n(v^T tanh(W [h_n; c]))`` whose context ``c`` is the mean of
  the bag's embeddings; ``z = Σ a_n h_n``; the bag logit is the **sum of the 128 pooled features** (the
  notebook's ``pred`` Linear is defined but unused). With ``num_classes > 1`` (not in the notebook) a
  ``Linear(E, C)`` head replaces the sum.
* ``tran_mil`` (notebook class ``TranMil``, the paper's "Tran-MIL"): Linear(d, 128) → 3 ×
  ``nn.TransformerEncoderLayer(128, nhead=8, dim_feedforward=128)`` (PyTorch defaults: dropout 0.1, ReLU,
  post-norm) → max over instances → Linear(128, C). No positional encoding, so it is permutation invariant.
  It is not TransMIL (no Nyström attention, PPEG or class token).

Upstream bugs not copied (they only bite at batch size > 1, which the notebook never ran): ``MIL_Pool`` fills
padded embeddings with -1000 *before* the context mean, so padding shifts the context; and finds padding by
testing embeddings for exact zeros. ``TranMil`` passes no padding mask to its encoder. Here padding follows
the mask (masked mean, masked softmax with ``finfo.min``, key-padding mask, masked max).
Neither model respects the standard MIL assumption: softmax-weighted averages with a signed read-out, and
self-attention before the max, both let one instance lower the bag score.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import InstanceMLP, masked_logits, masked_max, masked_mean, masked_softmax
from milkit.types import BagFeatures

__all__ = ["ContextAttentionMIL", "TranMIL", "SumHead"]


class SumHead(nn.Module):
    """The notebook's read-out: the bag logit is the sum of the pooled features, ``(B, E) → (B, 1)``."""

    def forward(self, z: Tensor) -> Tensor:
        return z.sum(-1, keepdim=True)


class ContextAttentionMIL(MILModel):
    """Notebook ``MIL_Pool``. Instance scores are the raw attention logits."""

    def __init__(self, in_dim: int, num_classes: int, embed_dim: int = 128, depth: int = 3, dropout: float = 0.5,
                 negative_slope: float = 0.2) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = InstanceMLP(in_dim, (embed_dim,) * depth, act=f"leaky_relu:{negative_slope}", dropout=dropout)
        e = self.embed.out_dim
        self.w = nn.Linear(2 * e, e)  # acts on [h_n; c]
        self.v = nn.Linear(e, 1)
        self.head = SumHead() if num_classes == 1 else nn.Linear(e, num_classes)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        e = h.shape[-1]
        c = masked_mean(h, mask)  # (B, E)
        # W [h_n; c] without materialising the concatenation
        pre = F.linear(h, self.w.weight[:, :e], self.w.bias) + F.linear(c, self.w.weight[:, e:]).unsqueeze(1)
        scores = self.v(torch.tanh(pre)).squeeze(-1)  # (B, N)
        a = masked_softmax(scores, mask)
        z = torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, E)
        return BagFeatures(bag_embedding=z, instance_scores=scores)


class TranMIL(MILModel):
    """Notebook ``TranMil``. Instance scores: the head's last-class logit on each encoded token."""

    def __init__(self, in_dim: int, num_classes: int, dim: int = 128, depth: int = 3, heads: int = 8,
                 ff_dim: int | None = None, dropout: float = 0.1) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = InstanceMLP(in_dim, (dim,), act="identity")
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ff_dim or dim, dropout, batch_first=True) for _ in range(depth))
        self.head = nn.Linear(dim, num_classes)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        pad = masked_logits(torch.zeros(mask.shape, dtype=h.dtype, device=h.device), mask)  # additive key mask
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=pad)
        return BagFeatures(bag_embedding=masked_max(h, mask), instance_scores=self.head(h)[..., -1])


@register_model("aut_attention", tiny_kwargs={"embed_dim": 16, "depth": 1},
                paper="Raff & Holt, NeurIPS 2023 (official notebook, MIL_Pool)",
                description="Attention MIL pooling with mean context and sum read-out (AUT notebook)")
def aut_attention(in_dim: int, num_classes: int, **kw) -> ContextAttentionMIL:
    return ContextAttentionMIL(in_dim, num_classes, **kw)


@register_model("tran_mil", tiny_kwargs={"dim": 16, "depth": 1, "heads": 2},
                paper="Raff & Holt, NeurIPS 2023 (official notebook, TranMil)",
                description="Tran-MIL: transformer encoder + max pooling (AUT notebook)")
def tran_mil(in_dim: int, num_classes: int, **kw) -> TranMIL:
    return TranMIL(in_dim, num_classes, **kw)
