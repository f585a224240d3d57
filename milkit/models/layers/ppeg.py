"""Pyramid Position Encoding Generator (PPEG) of TransMIL (Shao et al., NeurIPS 2021).

The instance tokens of a bag, laid out row-major on a ``s × s`` grid, are mapped to
``f + DWConv7(f) + DWConv5(f) + DWConv3(f)`` (depthwise convolutions with bias, zero padding).
Bags of a batch may have different grid sides: each bag's grid is placed in the top-left corner of a
zero canvas of the largest side, which is exactly what its own zero padding would give, so a bag gets the
same result alone and in a batch.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["PPEG"]


class PPEG(nn.Module):
    """Shape: ``tokens (B, L, D)`` with bag ``b``'s grid in its first ``sides[b]²`` rows → ``(B, L, D)``
    (rows past ``sides[b]²`` are returned as zeros)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # names as in the official code
        self.proj = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, tokens: Tensor, sides: Sequence[int]) -> Tensor:
        b, length, d = tokens.shape
        side = max(sides)
        uniform = side * side == length and all(s == side for s in sides)
        if uniform:
            grid = tokens.transpose(1, 2).reshape(b, d, side, side)
        else:
            grid = tokens.new_zeros(b, d, side, side)
            for i, s in enumerate(sides):
                grid[i, :, :s, :s] = tokens[i, : s * s].T.reshape(d, s, s)
        out = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        if uniform:
            return out.flatten(2).transpose(1, 2)
        res = tokens.new_zeros(b, length, d)
        for i, s in enumerate(sides):
            res[i, : s * s] = out[i, :, :s, :s].reshape(d, s * s).T
        return res
