"""R²T-MIL (Tang et al., CVPR 2024; DearCaat/RRT-MIL @ 7ecbdfb): the R²T encoder in front of a MIL aggregator.

* ``rrt``: any registered aggregator, with R²T installed as its ``reembed`` (after its input projection,
  before aggregation — where upstream's ``--only_rrt_enc`` inserts it). The encoder width is the
  aggregator's ``embed_dim``. ``model=rrt model.aggregator=transmil`` in Hydra.
* ``rrt_abmil``: R²T-MIL as in the paper: Linear(D, 512) → ReLU → Dropout(0.25) → R²T → ABMIL pooling
  without biases (tanh, hidden 128) → Linear(512, C), with upstream's xavier-normal initialisation.
  For D = 1024 and 2 classes it has the official model's 2,697,474 parameters.

The encoder block, its defaults and its deviations from upstream are in ``milkit/models/layers/rrt.py``.
Differences in how it plugs in: upstream's DSMIL re-embeds only the instance stream and TransMIL has no hook;
here R²T re-embeds whatever the aggregator aggregates (its ``reembed`` hook), for every aggregator.
"""
from __future__ import annotations

from typing import Any, Mapping

from milkit.errors import ConfigError
from milkit.models import create_model, model_info, register_model
from milkit.models.abmil import ABMIL
from milkit.models.base import MaskedIdentity, MILModel
from milkit.models.layers.rrt import RRTEncoder, init_linear_xavier

__all__ = ["attach_rrt", "accepts_reembed"]


def accepts_reembed(model: MILModel) -> bool:
    """True when ``model`` still has the template's identity ``reembed`` (nothing re-embeds yet)."""
    return isinstance(model.reembed, MaskedIdentity)


def attach_rrt(model: MILModel, name: str = "model", **encoder_kw: Any) -> MILModel:
    """Install an ``RRTEncoder`` of width ``model.embed_dim`` as ``model.reembed``; returns ``model``."""
    if not accepts_reembed(model):
        raise ConfigError(f"aggregator '{name}' already has a re-embedding module "
                          f"({type(model.reembed).__name__}); R²T cannot be inserted")
    model.reembed = RRTEncoder(model.embed_dim, **encoder_kw)
    return model


_TINY_ENCODER = {"num_heads": 2, "crmsa_heads": 2, "region_num": 2, "crmsa_region_num": 2, "epeg_k": 3}


@register_model("rrt", permutation_invariant=False,
                tiny_kwargs={"aggregator": "abmil", "aggregator_kwargs": model_info("abmil")["tiny_kwargs"],
                             **_TINY_ENCODER},
                description="R²T re-embedding in front of any registered aggregator (Tang et al. 2024)")
def rrt(in_dim: int, num_classes: int, aggregator: str = "abmil",
        aggregator_kwargs: Mapping[str, Any] | None = None, **encoder_kw: Any) -> MILModel:
    """``aggregator`` built by the registry with ``aggregator_kwargs``; ``encoder_kw`` go to ``RRTEncoder``."""
    model = create_model(aggregator, in_dim, num_classes, **dict(aggregator_kwargs or {}))
    return attach_rrt(model, aggregator, **encoder_kw)


@register_model("rrt_abmil", permutation_invariant=False, tiny_kwargs={"embed_dim": 16, **_TINY_ENCODER},
                description="R²T-MIL: R²T + ABMIL (Tang et al. 2024)")
def rrt_abmil(in_dim: int, num_classes: int, embed_dim: int = 512, attn_dim: int = 128, dropout: float = 0.25,
              act: str = "relu", **encoder_kw: Any) -> MILModel:
    """The paper's R²T-MIL; ``encoder_kw`` go to ``RRTEncoder`` (e.g. ``epeg_k``, ``crmsa_k``, ``all_shortcut``)."""
    model = ABMIL(in_dim, num_classes, embed_dims=(embed_dim,), attn_dim=attn_dim, dropout=dropout, act=act,
                  attn_bias=False)
    model.apply(init_linear_xavier)  # upstream RRTMIL.apply(initialize_weights) over the whole model
    return attach_rrt(model, "rrt_abmil", **encoder_kw)

