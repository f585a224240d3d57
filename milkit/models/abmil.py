"""Attention-based deep MIL (Ilse, Tomczak & Welling, ICML 2018), plain and gated.

Bag embedding ``z = Σ_n a_n h_n`` with ``a = softmax_n(w^T tanh(V h_n))`` (plain) or
``w^T (tanh(V h_n) ⊙ sigm(U h_n))`` (gated); head ``Linear(E, C)``. Instance scores are the raw
(pre-softmax) attention logits. Multi-class through a ``C``-way head (the paper is binary).
Defaults (E = 512, attention hidden 128, ReLU projection, dropout 0.25) follow the common WSI setting
(CLAM / MHIM-MIL); the paper's benchmark setting is available through ``embed_dims``/``attn_dim``.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import AttentionPool, InstanceMLP
from milkit.types import BagFeatures

__all__ = ["ABMIL"]


class ABMIL(MILModel):
    """Attention MIL.

    Args:
        in_dim: instance feature dimension ``D``.
        num_classes: number of output logits ``C``.
        embed_dims: widths of the per-instance projection (``()`` = none).
        attn_dim: hidden width of the attention network.
        gated: gated attention (Ilse et al. eq. 9).
        dropout: dropout after each projection layer.
        attn_dropout: dropout inside the attention network.
        act: projection activation.
        attn_bias: biases in the attention network (R²T and MHIM use none).
    """

    def __init__(self, in_dim: int, num_classes: int, embed_dims: Sequence[int] | int = (512,), attn_dim: int = 128,
                 gated: bool = False, dropout: float = 0.25, attn_dropout: float = 0.0, act: str = "relu",
                 attn_bias: bool = True) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = InstanceMLP(in_dim, embed_dims, act=act, dropout=dropout)
        self.pool = AttentionPool(self.embed.out_dim, attn_dim, gated=gated, dropout=attn_dropout, bias=attn_bias)
        self.head = nn.Linear(self.embed.out_dim, num_classes)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        z, logits = self.pool(h, mask)
        return BagFeatures(bag_embedding=z, instance_scores=logits)


_TINY = {"embed_dims": (16,), "attn_dim": 8}


@register_model("abmil", tiny_kwargs=_TINY, description="Attention MIL (Ilse et al. 2018)")
def abmil(in_dim: int, num_classes: int, **kw) -> ABMIL:
    return ABMIL(in_dim, num_classes, gated=False, **kw)


@register_model("gated_abmil", tiny_kwargs=_TINY, description="Gated attention MIL (Ilse et al. 2018)")
def gated_abmil(in_dim: int, num_classes: int, **kw) -> ABMIL:
    return ABMIL(in_dim, num_classes, gated=True, **kw)
