"""DSMIL (Li, Li & Eliceiri, "Dual-stream Multiple Instance Learning Network for Whole Slide Image
Classification with Self-supervised Contrastive Learning", CVPR 2021; official code
github.com/binli123/dsmil-wsi).

Two streams on instance embeddings ``h (B, N, E)``:

1. instance classifier ``c = Linear(E, C)``; per class ``k`` the critical instance ``m_k = argmax_n c_{n,k}``
   and the max-instance logits ``c_{m_k, k}`` ``(B, C)``;
2. B-classifier: queries ``q = tanh(W₂ relu(W₁ h))`` (128-d), values ``v = relu(W_v h)``; attention of every
   instance to each critical instance ``A_{n,k} = softmax_n(⟨q_n, q_{m_k}⟩ / √128)``; per-class bag embedding
   ``b_k = Σ_n A_{n,k} v_n`` ``(B, C, E)``; bag logits by ``Conv1d(C, C, kernel_size=E)`` over the classes.

Training loss (paper): ``0.5·L(bag) + 0.5·L(max-instance)``. milkit's training module adds ``L(logits)`` to
``target_losses``, which returns ``max_instance_weight · L(max-instance)`` with weight 1.0, so the total is
**2 × the paper's loss** (same minimiser; with Adam equivalent to the paper's run with half its weight
decay, so double ``weight_decay`` to match the paper exactly). ``L`` is milkit's task loss (CE for C ≥ 2,
BCE for C = 1); the official code uses BCE on one-hot labels for every C. Under ``task=survival`` ``L`` is
the survival loss: the max-instance logits (one per bin, critical instance per bin) are a second survival head.

Outputs: ``logits`` are the bag (B-classifier) logits (the official code can also average the sigmoids of
both streams at test time; not done here). ``instance_scores`` are the max over classes of the
instance-classifier logits (as MHIM-MIL uses). ``extras``: ``instance_logits (B, N, C)``,
``max_instance_logits (B, C)``, ``attention (B, C, N)`` (B-classifier weights); per-instance tensors are
-inf at padded positions.

Options and defaults: no input projection (``embed_dims=()``; the official scripts work on the features
directly; MHIM-MIL uses ``(512,)`` with dropout 0.25); ``passing_v=True`` (``v = Dropout → Linear → ReLU`` as in
the paper; the official scripts leave it off, ``v = h``); ``nonlinear_q=True``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import InstanceMLP, masked_logits, masked_softmax
from milkit.types import BagFeatures, MILOutput

__all__ = ["DSMIL"]


class DSMIL(MILModel):
    """Dual-stream MIL.

    Args:
        in_dim: instance feature dimension ``D``.
        num_classes: number of classes ``C``.
        embed_dims: optional per-instance projection before both streams.
        dropout: dropout after each projection layer.
        q_dim: query width (128).
        nonlinear_q: ``Linear → ReLU → Linear → Tanh`` queries (else one Linear).
        passing_v: learned values ``Dropout → Linear(E, E) → ReLU`` (else ``v = h``).
        dropout_v: dropout on the value input.
        max_instance_weight: weight of the max-instance loss in ``target_losses``.
    """

    def __init__(self, in_dim: int, num_classes: int, embed_dims: Sequence[int] | int = (), dropout: float = 0.0,
                 q_dim: int = 128, nonlinear_q: bool = True, passing_v: bool = True, dropout_v: float = 0.0,
                 max_instance_weight: float = 1.0) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = InstanceMLP(in_dim, embed_dims, act="relu", dropout=dropout)
        e = self.embed.out_dim
        self.instance_classifier = nn.Linear(e, num_classes)
        self.q = (nn.Sequential(nn.Linear(e, q_dim), nn.ReLU(), nn.Linear(q_dim, q_dim), nn.Tanh())
                  if nonlinear_q else nn.Linear(e, q_dim))
        self.v = nn.Sequential(nn.Dropout(dropout_v), nn.Linear(e, e), nn.ReLU()) if passing_v else nn.Identity()
        self.head = nn.Conv1d(num_classes, num_classes, kernel_size=e)
        self.max_instance_weight = max_instance_weight

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        inst = self.instance_classifier(h)  # (B, N, C)
        critical = masked_logits(inst, mask.unsqueeze(-1)).argmax(dim=1)  # (B, C)
        max_logits = torch.gather(inst, 1, critical.unsqueeze(1)).squeeze(1)  # (B, C)
        q = self.q(h)  # (B, N, Q)
        q_crit = torch.gather(q, 1, critical.unsqueeze(-1).expand(-1, -1, q.shape[-1]))  # (B, C, Q)
        logits = q @ q_crit.transpose(1, 2) / q.shape[-1] ** 0.5  # (B, N, C)
        attn = masked_softmax(logits, mask.unsqueeze(-1), dim=1)
        bag = attn.transpose(1, 2) @ self.v(h)  # (B, C, E)
        pad = ~mask.unsqueeze(-1)
        extras = {"instance_logits": inst.masked_fill(pad, float("-inf")), "max_instance_logits": max_logits,
                  "attention": attn.masked_fill(pad, float("-inf")).transpose(1, 2)}
        return BagFeatures(bag_embedding=bag, instance_scores=inst.amax(-1), extras=extras)

    def forward_head(self, feats: BagFeatures) -> Tensor:
        return self.head(feats.bag_embedding).squeeze(-1)  # (B, C, 1) → (B, C)

    def target_losses(self, out: MILOutput, y: Tensor, task: Any = None) -> dict[str, Tensor]:
        """The task's loss on the critical instance's logits (survival: the same NLL / Cox on its own head)."""
        from milkit.training.methods.base import task_loss  # lazy: training imports models

        loss = task_loss if task is None else task.loss
        return {"max_instance_loss": self.max_instance_weight * loss(out.extras["max_instance_logits"], y)}


_TINY = {"embed_dims": (16,), "q_dim": 8}


@register_model("dsmil", tiny_kwargs=_TINY, description="Dual-stream MIL (Li et al. 2021)")
def dsmil(in_dim: int, num_classes: int, **kw) -> DSMIL:
    return DSMIL(in_dim, num_classes, **kw)
