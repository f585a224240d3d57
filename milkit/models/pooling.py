"""Classic pooling baselines.

* ``mean`` / ``max``: per-instance MLP, mean or max over instances in embedding space, linear head.
* ``mi_net`` (Wang et al., Pattern Recognition 2018, "mi-Net"): per-instance MLP and classifier, bag logit
  = max over instances of the instance logits. With ``num_classes=1`` the bag score is a max of instance
  scores, so adding an instance can never lower it: the standard MIL assumption holds by construction.
* ``mi_net_embedding`` ("MI-Net"): per-instance MLP, max pooling of embeddings, linear head.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import InstanceMLP, masked_logits, masked_max, masked_mean
from milkit.types import BagFeatures

__all__ = ["PoolingMIL", "InstanceMaxMIL"]


class PoolingMIL(MILModel):
    """Embedding-space mean or max pooling. Instance scores: the head applied to each instance
    (its logit for the last class), useful for heatmaps."""

    def __init__(self, in_dim: int, num_classes: int, pool: str = "mean", embed_dims: Sequence[int] | int = (256,),
                 dropout: float = 0.25, act: str = "relu") -> None:
        super().__init__(in_dim, num_classes)
        if pool not in {"mean", "max"}:
            raise ValueError(f"pool must be 'mean' or 'max', got '{pool}'")
        self.pool = pool
        self.embed = InstanceMLP(in_dim, embed_dims, act=act, dropout=dropout)
        self.head = nn.Linear(self.embed.out_dim, num_classes)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        z = masked_mean(h, mask) if self.pool == "mean" else masked_max(h, mask)
        inst = self.head(h)[..., -1]  # (B, N)
        return BagFeatures(bag_embedding=z, instance_scores=inst)


class InstanceMaxMIL(MILModel):
    """mi-Net: bag logits ``(B, C)`` = max over instances of instance logits ``(B, N, C)``."""

    def __init__(self, in_dim: int, num_classes: int, embed_dims: Sequence[int] | int = (256,),
                 dropout: float = 0.25, act: str = "relu") -> None:
        super().__init__(in_dim, num_classes)
        self.embed = InstanceMLP(in_dim, embed_dims, act=act, dropout=dropout)
        self.instance_head = nn.Linear(self.embed.out_dim, num_classes)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        inst = self.instance_head(h)  # (B, N, C)
        bag = masked_logits(inst, mask.unsqueeze(-1)).amax(dim=1)  # (B, C)
        return BagFeatures(bag_embedding=bag, instance_scores=inst[..., -1], extras={"instance_logits": inst})

    def forward_head(self, feats: BagFeatures) -> Tensor:
        return feats.bag_embedding


_TINY = {"embed_dims": (16,)}


@register_model("mean", tiny_kwargs=_TINY, description="Mean pooling of instance embeddings")
def mean(in_dim: int, num_classes: int, **kw) -> PoolingMIL:
    return PoolingMIL(in_dim, num_classes, pool="mean", **kw)


@register_model("max", tiny_kwargs=_TINY, description="Max pooling of instance embeddings")
def max_(in_dim: int, num_classes: int, **kw) -> PoolingMIL:
    return PoolingMIL(in_dim, num_classes, pool="max", **kw)


@register_model("mi_net", tiny_kwargs=_TINY, mil_assumption="standard",
                description="mi-Net: instance classifier + max (Wang et al. 2018)")
def mi_net(in_dim: int, num_classes: int, **kw) -> InstanceMaxMIL:
    return InstanceMaxMIL(in_dim, num_classes, **kw)


@register_model("mi_net_embedding", tiny_kwargs=_TINY, description="MI-Net: embedding max + linear (Wang et al. 2018)")
def mi_net_embedding(in_dim: int, num_classes: int, **kw) -> PoolingMIL:
    return PoolingMIL(in_dim, num_classes, pool="max", **kw)
