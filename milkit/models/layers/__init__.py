"""Reusable blocks shared by MIL models (timm's ``layers/`` split)."""
from milkit.models.layers.attention_pool import AttentionPool, AttentionScorer
from milkit.models.layers.masked import full_mask, mask_scores, masked_logits, masked_max, masked_mean, masked_softmax
from milkit.models.layers.mlp import InstanceMLP, make_activation

__all__ = ["AttentionPool", "AttentionScorer", "InstanceMLP", "full_mask", "make_activation", "mask_scores",
           "masked_logits", "masked_max", "masked_mean", "masked_softmax"]
