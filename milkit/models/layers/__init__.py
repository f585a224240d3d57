"""Reusable blocks shared by MIL models (timm's ``layers/`` split)."""
from milkit.models.layers.attention_pool import AttentionPool, AttentionScorer
from milkit.models.layers.masked import full_mask, mask_scores, masked_logits, masked_max, masked_mean, masked_softmax
from milkit.models.layers.mlp import InstanceMLP, make_activation
from milkit.models.layers.nystrom import NystromAttention, iterative_pinv, segment_means
from milkit.models.layers.ppeg import PPEG

__all__ = ["AttentionPool", "AttentionScorer", "InstanceMLP", "NystromAttention", "PPEG", "full_mask",
           "iterative_pinv", "make_activation", "mask_scores", "masked_logits", "masked_max", "masked_mean",
           "masked_softmax", "segment_means"]
