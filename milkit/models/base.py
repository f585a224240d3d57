"""The MIL model template every registered model follows.

    x (B, N, D) ─ embed ─▶ h (B, N, E) ─ reembed(h, mask) ─▶ h ─ aggregate(h, mask, coords) ─▶ BagFeatures
                                                                         ─ forward_head ─▶ logits (B, C)

* ``embed`` is the per-instance input projection (Linear → act → dropout in most papers).
* ``reembed`` is a hook for instance re-embedding modules that sit between the projection and the
  aggregator (R²T); it is a mask-aware identity by default. Signature ``(h, mask) -> h``.
* ``aggregate`` is the model-specific part; it returns ``BagFeatures``.
* ``forward_head`` maps features to logits; methods can swap heads (CoMEL) or reuse embeddings (MHIM).
* ``target_losses(out, y, task)`` returns model-intrinsic auxiliary losses that need the bag label
  (CLAM's instance clustering, DSMIL's max-instance loss). Label-free auxiliary losses go to
  ``MILOutput.aux_losses``. The training module adds both to the task loss.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models.layers.masked import full_mask, mask_scores
from milkit.types import BagFeatures, MILOutput

__all__ = ["MILModel", "MaskedIdentity"]


class MaskedIdentity(nn.Module):
    """Default ``reembed``: returns ``h`` unchanged."""

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:  # noqa: ARG002
        return h


class MILModel(nn.Module):
    """Base class. Subclasses set ``self.embed`` and ``self.head`` and implement ``aggregate``."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.embed: nn.Module = nn.Identity()
        self.reembed: nn.Module = MaskedIdentity()
        self.head: nn.Module = nn.Identity()

    # ---- template -------------------------------------------------------------------------------
    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        raise NotImplementedError

    def forward_features(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None) -> BagFeatures:
        mask = full_mask(x) if mask is None else mask.bool()
        h = self.reembed(self.embed(x), mask)
        return self.aggregate(h, mask, coords)

    def forward_head(self, feats: BagFeatures) -> Tensor:
        return self.head(feats.bag_embedding)

    def forward(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None) -> MILOutput:
        if x.dim() != 3:
            raise ConfigError(f"expected bags of shape (B, N, D), got {tuple(x.shape)}")
        if x.shape[-1] != self.in_dim:
            raise ConfigError(f"feature dimension {x.shape[-1]} does not match the model's in_dim {self.in_dim}")
        mask = full_mask(x) if mask is None else mask.bool()
        feats = self.forward_features(x, mask, coords)
        logits = self.forward_head(feats)
        scores = feats.instance_scores
        if scores is not None:
            scores = mask_scores(scores, mask)
        return MILOutput(logits=logits, instance_scores=scores, bag_embedding=feats.bag_embedding,
                         aux_losses=feats.aux_losses, extras=feats.extras)

    def target_losses(self, out: MILOutput, y: Tensor, task: Any = None) -> dict[str, Tensor]:  # noqa: ARG002
        """Model-intrinsic losses that need the targets ``y``; already weighted. ``task``: the
        ``milkit.tasks.Task`` (None = classification), whose ``loss`` / ``categorical`` they may use."""
        return {}

    @property
    def embed_dim(self) -> int:
        """Width of ``h`` (what ``reembed`` and ``aggregate`` see)."""
        return int(getattr(self.embed, "out_dim", self.in_dim))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}"

    def config(self) -> dict[str, Any]:
        return {"in_dim": self.in_dim, "num_classes": self.num_classes}
