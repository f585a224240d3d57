"""MambaMIL (Yang, Wang & Chen, MICCAI 2024): a bag as a sequence, modelled by Mamba blocks.

    x (B, N, D) ─ Linear(D, 512) → GELU → Dropout ─▶ h
    h ← h + Mixer(LayerNorm(h))   × num_layers (2)          no FFN sub-layer
    LayerNorm ─ attention pool (Linear(512,128) → tanh → Linear(128,1), softmax over N) ─ Linear(512, C)

Mixers: ``"sr"`` SR-Mamba (paper eqs. 5–9): a forward scan plus a scan over the *reordered* sequence (tokens
``w, w+R, w+2R, …`` for ``w = 0..R-1``), put back in order, summed, then ``out_proj``; ``"bi"`` Bi-Mamba
(second scan over the reversed sequence); ``"mamba"`` plain Mamba. Instance scores are the raw attention logits.

Deviations from the official code (isyangshu/MambaMIL @ 9aea39e), on purpose:

* Reordering and reversal act on each bag's real length. Upstream zero-pads the sequence to a multiple of R
  and feeds the pad tokens (unmasked) through the reordered scan, where they sit between groups and enter the
  conv and the state of the next group. Here the order is the same with the pads removed
  (``sr_order``); for ``N % R == 0`` both agree exactly. Padded batches are thus exact, not just bags of one.
* Initialisation: the mixers keep Mamba's standard initialisation, including the Δ bias (``init="mamba"``).
  Upstream applies ``xavier_normal_`` + zero bias to *every* ``nn.Linear``, which also re-initialises the Mamba
  projections and zeroes ``dt_proj.bias`` (Δ ≈ softplus(0) ≈ 0.69 at init instead of 0.001–0.1), ignoring its
  own ``_no_reinit`` flag. ``init="upstream"`` reproduces that exactly. Both apply xavier_normal_ + zero bias
  to MambaMIL's own Linear layers (projection, attention, head), as upstream does.
* Multi-class heads, padded batches and instance scores (upstream returns no attention map).

Parameter count for ``in_dim=1024, num_classes=2``: 4,227,843 (SR, Bi) and 3,984,131 (plain), as upstream.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models import register_model
from milkit.models.base import MILModel
from milkit.models.layers import AttentionPool, InstanceMLP
from milkit.models.layers.mamba import DualMamba, Mamba
from milkit.types import BagFeatures

__all__ = ["MambaMIL", "sr_order", "flip_order", "invert_order", "convert_upstream_state_dict"]

_MIXERS = ("sr", "bi", "mamba")


def _positions(lengths: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Token index ``(1, n)`` and a ``(B, n)`` bool mask of the real (non-padded) positions."""
    idx = torch.arange(n, device=lengths.device).unsqueeze(0)
    return idx, idx < lengths.unsqueeze(1)


def sr_order(lengths: Tensor, n: int, rate: int) -> Tensor:
    """SR-Mamba's token order per bag, ``(B, n)`` long: real tokens ``i < L`` sorted by ``(i mod R, i div R)``
    (upstream's ``"b (k w) d -> b (w k) d"`` with its zero pads removed), padded positions unchanged at the end.
    """
    if rate < 1:
        raise ConfigError(f"MambaMIL reordering rate must be >= 1, got {rate}")
    idx, real = _positions(lengths, n)
    key = torch.where(real, (idx % rate) * n + idx // rate, n * rate + idx)
    return torch.argsort(key, dim=1)


def flip_order(lengths: Tensor, n: int) -> Tensor:
    """Bi-Mamba's order: each bag's real tokens reversed, padded positions unchanged, ``(B, n)`` long."""
    idx, real = _positions(lengths, n)
    return torch.where(real, lengths.unsqueeze(1) - 1 - idx, idx)


def invert_order(order: Tensor) -> Tensor:
    """The inverse permutation of every row of ``order (B, n)``."""
    return torch.argsort(order, dim=1)


# official MambaMIL module names → milkit's (the mixers and LayerNorms keep their names)
_UPSTREAM_PREFIXES = {"_fc1.0.": "embed.0.", "attention.0.": "pool.scorer.V.0.", "attention.2.": "pool.scorer.w.",
                      "classifier.": "head."}


def convert_upstream_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of an official MambaMIL checkpoint (isyangshu/MambaMIL ``models/MambaMIL.py``) to
    this implementation's, e.g. ``model.load_state_dict(convert_upstream_state_dict(torch.load(path)))``."""
    out = {}
    for key, value in state.items():
        old = next((p for p in _UPSTREAM_PREFIXES if key.startswith(p)), None)
        out[_UPSTREAM_PREFIXES[old] + key[len(old):] if old else key] = value
    return out


class MambaMIL(MILModel):
    """MambaMIL with a configurable mixer.

    Args:
        in_dim: instance feature dimension ``D``.
        num_classes: number of output logits ``C``.
        mixer: ``"sr"`` (SR-Mamba), ``"bi"`` (Bi-Mamba) or ``"mamba"``.
        rate: SR-Mamba reordering rate ``R`` (upstream constructor default 10; its training scripts use 5).
        embed_dim: width after the input projection (512).
        num_layers: number of ``LayerNorm → mixer`` residual layers (2).
        d_state, d_conv, expand: Mamba state size (16), conv width (4) and expansion (2).
        dropout: dropout after the input projection (0 for subtyping, 0.25 for survival upstream).
        attn_dim: hidden width of the attention pool (128).
        init: ``"mamba"`` (standard Mamba init in the mixers) or ``"upstream"`` (see the module docstring).
        scan_impl: selective-scan backend, ``"auto" | "cpu" | "ref" | "cuda"``.
    """

    def __init__(self, in_dim: int, num_classes: int, mixer: str = "sr", rate: int = 10, embed_dim: int = 512,
                 num_layers: int = 2, d_state: int = 16, d_conv: int = 4, expand: int = 2, dropout: float = 0.0,
                 attn_dim: int = 128, init: str = "mamba", scan_impl: str = "auto") -> None:
        super().__init__(in_dim, num_classes)
        if mixer not in _MIXERS:
            raise ConfigError(f"MambaMIL mixer must be one of {_MIXERS}, got '{mixer}'")
        if init not in ("mamba", "upstream"):
            raise ConfigError(f"MambaMIL init must be 'mamba' or 'upstream', got '{init}'")
        if rate < 1:
            raise ConfigError(f"MambaMIL reordering rate must be >= 1, got {rate}")
        self.mixer, self.rate = mixer, int(rate)
        self.embed = InstanceMLP(in_dim, (embed_dim,), act="gelu", dropout=dropout)
        block = Mamba if mixer == "mamba" else DualMamba
        mamba_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(embed_dim), block(embed_dim, **mamba_kw))
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.pool = AttentionPool(embed_dim, attn_dim, gated=False, bias=True)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights(upstream=init == "upstream")

    def _init_weights(self, upstream: bool) -> None:
        mixers = {id(m) for layer in self.layers for m in layer[1].modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and (upstream or id(m) not in mixers):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def token_order(self, mask: Tensor) -> Tensor | None:
        """The second branch's token order, ``(B, N)`` (None for plain Mamba)."""
        if self.mixer == "mamba":
            return None
        lengths = mask.sum(dim=1)
        n = mask.shape[1]
        return sr_order(lengths, n, self.rate) if self.mixer == "sr" else flip_order(lengths, n)

    def aggregate(self, h: Tensor, mask: Tensor, coords: Tensor | None = None) -> BagFeatures:
        # Right padding and causal scans: real tokens never see padded ones; zeroing keeps pads finite.
        h = h.masked_fill(~mask.unsqueeze(-1), 0.0)
        order = self.token_order(mask)
        for norm, mixer in self.layers:
            h = h + (mixer(norm(h)) if order is None else mixer(norm(h), order))
        h = self.norm(h).masked_fill(~mask.unsqueeze(-1), 0.0)
        z, logits = self.pool(h, mask)
        # the pool sees the post-Mamba features, not the aggregate's input (used by MHIM's class-aware score)
        return BagFeatures(bag_embedding=z, instance_scores=logits, extras={"pooled_instances": h})

    def config(self) -> dict:
        return {**super().config(), "mixer": self.mixer, "rate": self.rate}


_TINY = {"embed_dim": 16, "d_state": 4, "attn_dim": 8, "rate": 3}
_META = dict(permutation_invariant=False, mil_assumption="none", paper="Yang et al., MICCAI 2024")


@register_model("mambamil", tiny_kwargs=_TINY, description="MambaMIL with SR-Mamba (Yang et al. 2024)", **_META)
def mambamil(in_dim: int, num_classes: int, **kw) -> MambaMIL:
    return MambaMIL(in_dim, num_classes, mixer="sr", **kw)


@register_model("mambamil_bi", tiny_kwargs=_TINY, description="MambaMIL with Bi-Mamba (Yang et al. 2024)", **_META)
def mambamil_bi(in_dim: int, num_classes: int, **kw) -> MambaMIL:
    return MambaMIL(in_dim, num_classes, mixer="bi", **kw)


@register_model("mambamil_plain", tiny_kwargs=_TINY, description="MambaMIL with plain Mamba (Yang et al. 2024)",
                **_META)
def mambamil_plain(in_dim: int, num_classes: int, **kw) -> MambaMIL:
    return MambaMIL(in_dim, num_classes, mixer="mamba", **kw)
