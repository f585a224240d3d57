"""Instance masks for masked hard instance mining (MHIM-MIL), as batched index operations.

Every function works on right-padded batches: ``mask (B, N)`` bool marks real instances, counts are per bag,
and padding is never selected. A selection is a ``(B, N)`` bool tensor (True = selected). Randomness comes
from ``torch.rand`` with an optional ``generator``, so masks are reproducible under a seed.

Counts follow MHIM-MIL: a ratio ``r`` of a bag with ``n`` real instances selects ``ceil(n·r)`` of them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ratio_count", "top_k_select", "random_select", "high_score_select", "mhim_drop_mask",
           "keep_at_least_one", "gather_instances", "cosine_decay"]

_EPS = 1e-6  # so that e.g. 10 × 0.3 = 3.0000000000000004 counts as 3, not 4


def ratio_count(lengths: Tensor, ratio: float) -> Tensor:
    """``ceil(n·ratio)`` per bag, within ``[0, n]``. ``lengths (B,)`` → ``(B,)`` long."""
    if ratio <= 0:
        return torch.zeros_like(lengths, dtype=torch.long)
    count = torch.ceil(lengths.to(torch.float64) * ratio - _EPS).long()
    return torch.minimum(count, lengths.long())


def _rank(order: Tensor) -> Tensor:
    """Position of every element in a sort ``order (B, N)``: ``rank[b, order[b, i]] = i``."""
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def _sort_desc(key: Tensor, mask: Tensor, tiebreak: Tensor | None = None) -> Tensor:
    """Descending sort order of ``key (B, N)`` with padding last; ties broken by ``tiebreak``, then by index."""
    neg_inf = torch.tensor(float("-inf"), dtype=key.dtype, device=key.device)
    key = torch.where(mask, key, neg_inf)
    if tiebreak is None:
        return torch.argsort(key, dim=1, descending=True, stable=True)
    first = torch.argsort(torch.where(mask, tiebreak.to(key.dtype), neg_inf), dim=1, descending=True, stable=True)
    second = torch.argsort(key.gather(1, first), dim=1, descending=True, stable=True)
    return first.gather(1, second)


def top_k_select(scores: Tensor, mask: Tensor, k: Tensor, largest: bool = True) -> Tensor:
    """Select the ``k[b]`` highest (or lowest) scoring real instances of each bag.

    ``scores`` is ``(B, N)``, or ``(B, H, N)`` for multi-head attention, fused by voting as in MHIM-MIL:
    every head picks its own top ``k``, and the ``k`` instances picked by most heads are selected (ties
    broken by the mean score over heads). Equal scores are broken by position, so the result is deterministic.
    """
    scores = scores.float() if largest else -scores.float()
    k = k.to(scores.device).unsqueeze(1)
    if scores.dim() == 2:
        return (_rank(_sort_desc(scores, mask)) < k) & mask
    b, h, n = scores.shape
    per_head = top_k_select(scores.reshape(b * h, n), mask.repeat_interleave(h, 0), k.repeat_interleave(h, 0)[:, 0])
    votes = per_head.view(b, h, n).sum(1).to(scores.dtype)
    return (_rank(_sort_desc(votes, mask, tiebreak=scores.mean(1))) < k) & mask


def random_select(candidates: Tensor, k: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random subset of ``k[b]`` of the ``candidates (B, N)`` of each bag."""
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    return top_k_select(noise, candidates, torch.minimum(k.to(candidates.device), candidates.sum(1)))


def high_score_select(scores: Tensor, mask: Tensor, ratio: float, random_frac: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """High-score masking ("HAM"); with ``random_frac < 1`` the "randomly HAM" variant of MHIM-MIL Supp. B.1:
    ``ceil(n·ratio)`` instances drawn at random from the top ``ceil(n·ratio/random_frac)``."""
    lengths = mask.sum(1)
    count = ratio_count(lengths, ratio)
    if random_frac >= 1.0:
        return top_k_select(scores, mask, count)
    if random_frac <= 0:
        raise ValueError(f"random_frac must be in (0, 1], got {random_frac}")
    pool = top_k_select(scores, mask, ratio_count(lengths, min(1.0, ratio / random_frac)))
    return random_select(pool, count, generator)


def mhim_drop_mask(scores: Tensor, mask: Tensor, high: float = 0.0, high_random_frac: float = 1.0,
                   low: float = 0.0, rand: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """The union of MHIM-MIL's masks (v1 §3.3): random ``rand``, low-score ``low`` and high-score ``high``.

    Each set is chosen among all real instances independently (as upstream), so the sets may overlap.
    Returns the ``(B, N)`` instances to drop; at least one real instance per bag is always kept.
    """
    lengths = mask.sum(1)
    drop = torch.zeros_like(mask)
    if rand > 0:
        drop |= random_select(mask, ratio_count(lengths, rand), generator)
    if low > 0:
        drop |= top_k_select(scores, mask, ratio_count(lengths, low), largest=False)
    if high > 0:
        drop |= high_score_select(scores, mask, high, high_random_frac, generator)
    return keep_at_least_one(drop, mask, generator)


def keep_at_least_one(drop: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Un-drop one random instance of every non-empty bag whose real instances would all be dropped
    (tiny bags: ``ceil`` rounds every ratio up to at least one instance)."""
    empty = ~(mask & ~drop).any(1) & mask.any(1)
    if not bool(empty.any()):
        return drop
    rescue = random_select(mask & empty.unsqueeze(1), torch.ones_like(empty, dtype=torch.long), generator)
    return drop & ~rescue


def gather_instances(keep: Tensor, *tensors: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
    """Re-collate the kept instances of each bag into a new right-padded batch, in their original order.

    Args:
        keep: ``(B, N)`` bool, the instances to keep (real ones only).
        tensors: per-instance tensors ``(B, N, ...)`` (features, coords ...); ``None`` passes through.
    Returns:
        the new mask ``(B, M)`` with ``M = max_b keep[b].sum()``, and the gathered tensors ``(B, M, ...)``
        (padded rows hold whatever the source held; the mask marks them).
    """
    counts = keep.sum(1)
    width = max(1, int(counts.max())) if keep.numel() else 1
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]  # kept first, in order
    new_mask = torch.arange(width, device=keep.device).unsqueeze(0) < counts.unsqueeze(1)
    out: list[Tensor | None] = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        idx = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        out.append(t.gather(1, idx))
    return new_mask, out


def cosine_decay(start: float, end: float, progress: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1)."""
    progress = min(1.0, max(0.0, progress))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
