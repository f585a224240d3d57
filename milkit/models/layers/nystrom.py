"""Nyström self-attention (Xiong et al., "Nyströmformer", AAAI 2021) with per-bag landmarks.

``softmax(QKᵀ/√d) V ≈ softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ) V`` where the ``m`` landmarks
``Q̃, K̃`` are means of contiguous segments of the (scaled) queries and keys, and ``pinv`` is the
Newton–Schulz iteration of the paper (eq. 15–16). This is the layer TransMIL uses (through the
``nystrom-attention`` package), including its optional depthwise residual convolution of the values.

Padding (``mask``, True = real token; masks must be right-padded as in ``BagBatch``):

* Landmarks are computed **per bag over its real tokens only**: a bag of ``n`` real tokens is split,
  as in the reference package, into ``m`` segments of ``ceil(n / m)`` tokens after ``m·ceil(n/m) − n``
  virtual tokens at the front, and each landmark is the mean of the real tokens of its segment. Landmarks
  whose segment holds no real token are dropped (masked out of all three softmaxes). A bag therefore gets
  exactly the same landmarks alone and padded inside a batch. (The reference package pads the sequence
  with zero tokens at the front and, without a mask, lets them into the landmark means and the softmaxes.)
* Padded keys get zero weight; padded tokens are zeroed before the projections, so the residual
  convolution sees them as its own zero padding.
* The pinv initialisation ``Z₀ = Aᵀ / (‖A‖₁ ‖A‖_∞)`` takes the norms per bag (max over that bag's heads).
  The reference package takes them over the whole batch, which couples bags; for one bag the two agree.
  The iteration runs in float32 under autocast (it is ``m × m`` and amplifies half-precision rounding).

The product is evaluated as ``attn1 @ (pinv @ (attn3 @ V))``: ``O(N·m·d)`` per head, where the reference's
``(attn1 @ pinv) @ (attn3 @ V)`` also costs ``O(N·m²)`` time and an ``(N, m)`` activation per head.

Per-query attention rows (e.g. the cls token's attention to every instance) are returned on request as
``(attn1[rows] @ pinv) @ attn3`` without ever materialising the ``N × N`` matrix.
"""
from __future__ import annotations

from math import ceil

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.models.layers.masked import masked_softmax

__all__ = ["NystromAttention", "iterative_pinv", "segment_means"]


def iterative_pinv(a: Tensor, iters: int = 6) -> Tensor:
    """Newton–Schulz Moore–Penrose pseudo-inverse of ``a (B, ..., m, m)``; the initial scale is per item
    of the leading (bag) axis. Exactly-zero rows/columns of ``a`` stay zero in the result."""
    abs_a = a.abs()
    reduce_dims = tuple(range(1, a.dim() - 1))
    row_norm = abs_a.sum(-1).amax(dim=reduce_dims)  # ‖A‖_∞ per bag, (B,)
    col_norm = abs_a.sum(-2).amax(dim=reduce_dims)  # ‖A‖_1 per bag, (B,)
    scale = (row_norm * col_norm).clamp_min(torch.finfo(a.dtype).tiny)
    z = a.transpose(-1, -2) / scale.view(-1, *([1] * (a.dim() - 1)))
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(t: Tensor, lengths: list[int], n_segments: int) -> tuple[Tensor, Tensor]:
    """Landmarks: means of ``n_segments`` contiguous segments of each bag's first ``lengths[b]`` tokens.

    Shapes: ``t (B, H, N, d)`` → means ``(B, H, m, d)`` and ``nonempty (B, m)`` bool. Segments have
    ``ceil(n/m)`` slots, the first ``m·ceil(n/m) − n`` of which (at the front) are empty.
    """
    means, nonempty = [], []
    for b, n in enumerate(lengths):
        seg = max(1, ceil(n / n_segments))
        front = seg * n_segments - n
        sums = F.pad(t[b, :, :n], (0, 0, front, 0)).unflatten(1, (n_segments, seg)).sum(2)  # (H, m, d)
        counts = F.pad(t.new_ones(n), (front, 0)).view(n_segments, seg).sum(1)  # (m,)
        means.append(sums / counts.clamp_min(1.0).unsqueeze(-1))
        nonempty.append(counts > 0)
    return torch.stack(means), torch.stack(nonempty)


def _masked_scores(a: Tensor, b: Tensor, keep: Tensor) -> Tensor:
    """``a @ bᵀ`` plus ``finfo.min`` at the columns where ``keep (B, M)`` is False, in one fused op (no
    masked copy of the large score matrix). Shapes: ``a (B, H, n, d)``, ``b (B, H, M, d)`` → ``(B, H, n, M)``."""
    bsz, heads, n, d = a.shape
    bias = torch.zeros(keep.shape, dtype=a.dtype, device=a.device).masked_fill(~keep, torch.finfo(a.dtype).min)
    bias = bias[:, None, None, :].expand(bsz, heads, 1, keep.shape[1]).reshape(bsz * heads, 1, -1)
    out = torch.baddbmm(bias, a.reshape(bsz * heads, n, d), b.reshape(bsz * heads, -1, d).transpose(1, 2))
    return out.view(bsz, heads, n, -1)


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention.

    Args:
        dim: token width ``D``.
        heads: number of heads ``H``.
        dim_head: width per head (default ``dim // heads``).
        n_landmarks: number of landmarks ``m`` (TransMIL: ``dim // 2``).
        pinv_iterations: Newton–Schulz iterations for the pseudo-inverse.
        residual_kernel: kernel length of the depthwise (per-head) residual convolution of the values
            along the sequence; ``0`` disables it.
        dropout: dropout after the output projection.

    Shape:
        ``x (B, N, D)``, ``mask (B, N)`` bool → ``(B, N, D)``.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int | None = None, n_landmarks: int = 256,
                 pinv_iterations: int = 6, residual_kernel: int = 33, dropout: float = 0.0) -> None:
        super().__init__()
        dim_head = dim // heads if dim_head is None else dim_head
        if dim_head < 1 or n_landmarks < 1:
            raise ConfigError(f"need dim_head >= 1 and n_landmarks >= 1, got {dim_head} and {n_landmarks}")
        self.heads, self.dim_head, self.n_landmarks = heads, dim_head, n_landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head ** -0.5
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.res_conv = (nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0),
                                   groups=heads, bias=False) if residual_kernel else None)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(x, mask)[0]

    def attend(self, x: Tensor, mask: Tensor | None = None,
               query_rows: list[int] | None = None) -> tuple[Tensor, Tensor | None]:
        """Attention output ``(B, N, D)`` and, for ``query_rows`` (e.g. ``[0]`` for a cls token), the rows of
        the Nyström attention matrix ``(B, H, len(query_rows), N)`` (zero at padded keys), else ``None``."""
        b, n, _ = x.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.heads, self.dim_head)).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
        q = q * self.scale
        lengths = mask.sum(1).tolist()
        q_land, nonempty = segment_means(q, lengths, self.n_landmarks)  # (B, H, m, d), (B, m)
        k_land, _ = segment_means(k, lengths, self.n_landmarks)
        land = nonempty[:, None, None, :]  # (B, 1, 1, m)
        attn1 = torch.softmax(_masked_scores(q, k_land, nonempty), dim=-1)  # (B, H, N, m)
        attn2 = masked_softmax(q_land @ k_land.transpose(-1, -2), land & land.transpose(-1, -2), dim=-1)  # (B, H, m, m)
        # rows of empty landmarks need no mask here: they meet the zero columns of attn1 and pinv(attn2)
        attn3 = torch.softmax(_masked_scores(q_land, k, mask), dim=-1)  # (B, H, m, N)
        with torch.autocast(x.device.type, enabled=False):  # the iteration amplifies bf16/fp16 rounding
            z = iterative_pinv(attn2.float(), self.pinv_iterations).to(attn2.dtype)
        out = attn1 @ (z @ (attn3 @ v))  # (B, H, N, d); this order never forms the (N, m) product attn1 @ z
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).flatten(2))  # (B, N, D)
        rows = None if query_rows is None else (attn1[:, :, query_rows] @ z) @ attn3
        return out, rows
