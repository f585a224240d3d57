"""Fold a bag into a pseudo-square and partition it into square regions (R²T, Tang et al. CVPR 2024).

Upstream (DearCaat/RRT-MIL ``modules/rmsa.py``) folds the ``n`` instances of a bag, in bag order, row-major
into an ``H × H`` square with ``H = ceil(sqrt(n))`` rounded up to a multiple of ``region_num`` (or of
``region_size``), appends ``H² − n`` zero rows, and cuts the square into non-overlapping ``M × M`` windows
(Swin ``window_partition``). Here the same geometry is computed *per bag from its real length*, and the
regions of a batch are laid out as ``(B, R, P)`` slots (``R`` = max regions, ``P`` = max tokens per region
over the batch) with a validity mask instead of zero rows, so that padding never takes part and a bag gives
the same result alone and inside a padded batch. The real instances are the ``mask``-True positions in order,
so a non-contiguous mask behaves like the bag with the masked instances removed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from milkit.errors import ConfigError

__all__ = ["RegionLayout", "fold_geometry"]


def fold_geometry(n: int, region_num: int = 8, region_size: int | None = None) -> tuple[int, int, int]:
    """Square side ``H``, regions per side ``S`` and region side ``M`` for a bag of ``n`` instances.

    With ``region_size`` set it fixes ``M`` (``S`` grows with ``n``); otherwise ``region_num`` fixes ``S``.
    """
    region_size = region_size or None  # upstream spells "unset" as 0
    if (region_size or region_num) < 1:
        raise ConfigError(f"region_num ({region_num}) and region_size ({region_size}) must be >= 1")
    side = math.isqrt(max(n, 1) - 1) + 1  # ceil(sqrt(n))
    step = region_size or region_num
    h = -(-side // step) * step
    return (h, h // region_size, region_size) if region_size else (h, region_num, h // region_num)


@dataclass(frozen=True)
class RegionLayout:
    """Slots of every region of every bag, and the way back to instance order.

    Attributes:
        index: ``(B·R·P,)`` flat position (into ``B·N``) of the instance in each slot; 0 for empty slots.
        valid: ``(B, R, P)`` bool, True where a slot holds a real instance.
        inverse: ``(B·N,)`` flat slot of each instance; 0 for padded positions.
        mask: ``(B, N)`` the instance mask the layout was built from.
    """

    index: Tensor
    valid: Tensor
    inverse: Tensor
    mask: Tensor

    @classmethod
    def build(cls, mask: Tensor, region_num: int = 8, region_size: int | None = None) -> "RegionLayout":
        """Layout for ``mask (B, N)`` (True = real instance)."""
        b_size, n_max = mask.shape
        dev = mask.device
        lengths = mask.sum(1).tolist()
        geo = [fold_geometry(n, region_num, region_size) for n in lengths]
        r_max = max(s * s for _, s, _ in geo)
        p_max = max(m * m for _, _, m in geo)
        r, p = torch.arange(r_max, device=dev), torch.arange(p_max, device=dev)
        index = torch.zeros(b_size, r_max, p_max, dtype=torch.long, device=dev)
        valid = torch.zeros(b_size, r_max, p_max, dtype=torch.bool, device=dev)
        inverse = torch.zeros(b_size, n_max, dtype=torch.long, device=dev)
        for b, (n, (h, s, m)) in enumerate(zip(lengths, geo)):
            if n == 0:
                continue
            pos = mask[b].nonzero().squeeze(1)  # (n,) positions of the real instances
            # sequence index of slot (region r, token p): row-major in the square, windows of side m
            t = ((r // s * m)[:, None] + (p // m)[None]) * h + (r % s * m)[:, None] + (p % m)[None]  # (R, P)
            ok = (r < s * s)[:, None] & (p < m * m)[None] & (t < n)
            index[b] = b * n_max + pos[t.clamp(max=n - 1)]
            valid[b] = ok
            row, col = torch.arange(n, device=dev).div(h, rounding_mode="floor"), torch.arange(n, device=dev) % h
            slot = (row // m * s + col // m) * p_max + row % m * m + col % m
            inverse[b, pos] = b * r_max * p_max + slot
        return cls(index.view(-1), valid, inverse.view(-1), mask)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(B, R, P)``."""
        return tuple(self.valid.shape)  # type: ignore[return-value]

    def gather(self, x: Tensor) -> Tensor:
        """Instances ``(B, N, C)`` → region slots ``(B, R, P, C)``, zero at empty slots."""
        out = x.reshape(-1, x.shape[-1])[self.index].view(*self.shape, x.shape[-1])
        return out.masked_fill(~self.valid.unsqueeze(-1), 0.0)

    def scatter(self, y: Tensor) -> Tensor:
        """Region slots ``(B, R, P, C)`` → instances ``(B, N, C)``, zero at padded positions."""
        out = y.reshape(-1, y.shape[-1])[self.inverse].view(*self.mask.shape, y.shape[-1])
        return out.masked_fill(~self.mask.unsqueeze(-1), 0.0)
