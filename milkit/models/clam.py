"""CLAM-SB and CLAM-MB (Lu et al., "Data-efficient and weakly supervised computational pathology on whole-slide
images", Nature Biomedical Engineering 2021; official code github.com/mahmoodlab/CLAM).

``fc`` (Linear(D, 512) → ReLU → Dropout) → gated attention (512 → 256, one branch for SB, one per class for
MB) → attention pooling → bag classifier (SB: ``Linear(512, C)``; MB: one ``Linear(512, 1)`` per class on
that class's embedding). Defaults are the official "small" size with ``--drop_out 0.25``.

Instance clustering loss (``target_losses``), per bag and per class ``k`` with its own instance classifier
``Linear(512, 2)`` and attention branch (SB: the shared one; MB: branch ``k``):

* in-class (``k`` = bag label): the ``B`` highest-attention instances get pseudo-label 1 and the ``B`` lowest
  get 0, loss = mean CE over those ``2B``;
* out-of-class (only with ``subtyping=True``): the ``B`` highest-attention instances get 0, mean CE over ``B``;
* per bag: sum over classes, divided by the number of classes when ``subtyping``; averaged over bags.

Deviations / choices:

* Loss: CE (the official ``--inst_loss`` default; its README examples use the smooth top-1 SVM).
* Weighting: the paper trains ``0.7·CE(bag) + 0.3·L_inst`` (``bag_weight = 0.7``). milkit's training module
  adds ``CE(logits)`` to ``target_losses``, which returns ``(1 − bag_weight)/bag_weight · L_inst``, so the total
  is ``1/0.7 ×`` the paper's (same minimiser; with Adam, use ``weight_decay / 0.7`` to match it exactly).
* Small bags: the official code fails when a bag has fewer than ``B`` (out-of-class) or ``2B`` instances.
  Here in-class uses ``min(B, n // 2)`` per side (so positives and negatives never overlap) and out-of-class
  ``min(B, n)``; a one-instance bag has no in-class term.
* ``C = 1`` (one logit, binary): SB keeps two instance classifiers (labels 0 and 1, like the official binary
  model); MB has one attention branch and one instance classifier, for the positive class.
* Attention dropout is applied once after the gating product (milkit's ``AttentionScorer``) instead of
  separately after the tanh and the sigmoid branches.

``instance_scores``: raw (pre-softmax) attention; for MB the branch of the predicted class, as CLAM's heatmaps
do. ``extras["attention"]`` holds all branches ``(B, K, N)`` and ``extras["instance_embeddings"]`` the ``fc``
output ``(B, N, 512)`` that the instance loss classifies.

Under ``task=survival`` (no class labels) the instance clustering loss is off: CLAM trains on the survival loss
of its bag head alone (its ``K`` = ``n_bins`` attention branches for MB are kept, one per bin).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import AttentionPool, InstanceMLP
from milkit.types import BagFeatures, MILOutput

__all__ = ["CLAM", "ClassWiseLinear"]


class ClassWiseLinear(nn.ModuleList):
    """``K`` independent ``Linear(in_dim, out_dim)``; the ``k``-th acts on slice ``k`` of axis 1.

    Shape: ``(B, K, ..., in_dim)`` → ``(B, K, ..., out_dim)``.
    """

    def __init__(self, k: int, in_dim: int, out_dim: int) -> None:
        super().__init__([nn.Linear(in_dim, out_dim) for _ in range(k)])

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([layer(x[:, i]) for i, layer in enumerate(self)], dim=1)


class CLAM(MILModel):
    """CLAM.

    Args:
        in_dim: instance feature dimension ``D``.
        num_classes: number of classes ``C``.
        multi_branch: CLAM-MB (one attention branch and bag classifier per class) instead of CLAM-SB.
        embed_dim: width of ``fc`` (512).
        attn_dim: attention hidden width (256 "small", 384 "big").
        gated: gated attention.
        dropout: dropout after ``fc`` and inside the attention network.
        k_sample: ``B``, instances per pseudo-label side.
        subtyping: add the out-of-class term (mutually exclusive subtypes).
        bag_weight: the paper's bag-loss weight (0.7); sets the instance-loss weight.
    """

    def __init__(self, in_dim: int, num_classes: int, multi_branch: bool = False, embed_dim: int = 512,
                 attn_dim: int = 256, gated: bool = True, dropout: float = 0.25, k_sample: int = 8,
                 subtyping: bool = False, bag_weight: float = 0.7) -> None:
        super().__init__(in_dim, num_classes)
        if not 0.0 < bag_weight <= 1.0:
            raise ConfigError(f"bag_weight must be in (0, 1], got {bag_weight}")
        self.multi_branch, self.k_sample, self.subtyping = multi_branch, k_sample, subtyping
        self.instance_weight = (1.0 - bag_weight) / bag_weight
        self.embed = InstanceMLP(in_dim, (embed_dim,), act="relu", dropout=dropout)
        branches = num_classes if multi_branch else 1
        self.pool = AttentionPool(embed_dim, attn_dim, n_branches=branches, gated=gated, dropout=dropout)
        self.head = ClassWiseLinear(num_classes, embed_dim, 1) if multi_branch else nn.Linear(embed_dim, num_classes)
        # (label value, attention branch) of each instance classifier
        if num_classes == 1:
            pairs = [(1, 0)] if multi_branch else [(0, 0), (1, 0)]
        else:
            pairs = [(k, k if multi_branch else 0) for k in range(num_classes)]
        self.register_buffer("inst_label", torch.tensor([p[0] for p in pairs]), persistent=False)
        self.register_buffer("inst_branch", torch.tensor([p[1] for p in pairs]), persistent=False)
        self.instance_classifiers = ClassWiseLinear(len(pairs), embed_dim, 2)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        z, attn = self.pool(h, mask)
        if self.multi_branch and z.dim() == 2:  # C = 1: AttentionPool squeezes a single branch
            z, attn = z.unsqueeze(1), attn.unsqueeze(1)
        attn3 = attn if attn.dim() == 3 else attn.unsqueeze(1)  # (B, K, N)
        scores = attn3[:, 0]
        if self.multi_branch and self.num_classes > 1:
            pred = self.head(z).squeeze(-1).argmax(-1)  # (B,)
            scores = torch.gather(attn3, 1, pred.view(-1, 1, 1).expand(-1, 1, attn3.shape[-1])).squeeze(1)
        extras = {"attention": attn3.masked_fill(~mask.unsqueeze(1), float("-inf")), "instance_embeddings": h}
        return BagFeatures(bag_embedding=z, instance_scores=scores, extras=extras)

    def forward_head(self, feats: BagFeatures) -> Tensor:
        logits = self.head(feats.bag_embedding)
        return logits.squeeze(-1) if self.multi_branch else logits

    def target_losses(self, out: MILOutput, y: Tensor, task: Any = None) -> dict[str, Tensor]:
        """Instance clustering needs class labels: off (no loss) under non-categorical tasks such as survival."""
        if task is not None and not task.categorical:
            return {}
        return {"instance_loss": self.instance_weight * self.instance_loss(out.extras["attention"],
                                                                           out.extras["instance_embeddings"], y)}

    def instance_loss(self, attention: Tensor, h: Tensor, y: Tensor) -> Tensor:
        """CLAM's instance clustering loss. ``attention (B, branches, N)`` raw, -inf at padding; ``h (B, N, E)``;
        ``y (B,)`` → scalar."""
        a = attention[:, self.inst_branch]  # (B, K, N)
        mask = torch.isfinite(a)
        n = mask[:, 0].sum(1)  # (B,)
        k = min(self.k_sample, a.shape[-1])
        top = a.topk(k, dim=-1).indices  # (B, K, k); padding (-inf) ranks last
        bottom = (-a).masked_fill(~mask, float("-inf")).topk(k, dim=-1).indices
        idx = torch.cat([top, bottom], dim=-1)  # (B, K, 2k)
        e = h.shape[-1]
        picked = torch.gather(h.unsqueeze(1).expand(-1, idx.shape[1], -1, -1), 2, idx.unsqueeze(-1).expand(-1, -1, -1, e))
        logp = F.log_softmax(self.instance_classifiers(picked), dim=-1)  # (B, K, 2k, 2)
        rank = torch.arange(k, device=a.device)
        k_in = torch.clamp(n // 2, max=self.k_sample).view(-1, 1, 1)  # (B, 1, 1)
        k_out = torch.clamp(n, max=self.k_sample).view(-1, 1, 1)
        in_terms = torch.where(rank < k_in, -logp[..., :k, 1] - logp[..., k:, 0], 0.0)  # top → 1, bottom → 0
        in_loss = in_terms.sum(-1) / (2 * k_in.squeeze(-1)).clamp_min(1)  # (B, K)
        out_loss = torch.where(rank < k_out, -logp[..., :k, 0], 0.0).sum(-1) / k_out.squeeze(-1).clamp_min(1)
        in_class = self.inst_label.unsqueeze(0) == y.unsqueeze(1)  # (B, K)
        per_bag = torch.where(in_class, in_loss, out_loss * float(self.subtyping)).sum(1)
        if self.subtyping:
            per_bag = per_bag / a.shape[1]
        return per_bag.mean()


_TINY = {"embed_dim": 16, "attn_dim": 8, "k_sample": 2, "subtyping": True}


@register_model("clam_sb", tiny_kwargs=_TINY, description="CLAM single-branch (Lu et al. 2021)")
def clam_sb(in_dim: int, num_classes: int, **kw) -> CLAM:
    return CLAM(in_dim, num_classes, multi_branch=False, **kw)


@register_model("clam_mb", tiny_kwargs=_TINY, description="CLAM multi-branch (Lu et al. 2021)")
def clam_mb(in_dim: int, num_classes: int, **kw) -> CLAM:
    return CLAM(in_dim, num_classes, multi_branch=True, **kw)
