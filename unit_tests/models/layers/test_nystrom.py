"""Nyström attention: landmarks, pseudo-inverse, exactness limit, padding, attention rows, peer equivalence."""
from __future__ import annotations

import pytest
import torch

from milkit.models.layers.nystrom import NystromAttention, iterative_pinv, segment_means


def _identity_out(attn: NystromAttention) -> None:
    """Make the output projection the identity so that outputs are the concatenated heads."""
    with torch.no_grad():
        attn.to_out[0].weight.copy_(torch.eye(attn.to_out[0].weight.shape[0]))
        attn.to_out[0].bias.zero_()


def _heads(attn: NystromAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = attn.to_qkv(x).unflatten(-1, (3, attn.heads, attn.dim_head)).permute(2, 0, 3, 1, 4)
    return q, k, v


def test_iterative_pinv_converges_to_pinv() -> None:
    a = torch.softmax(3 * torch.randn(2, 3, 6, 6, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(iterative_pinv(a, iters=40), torch.linalg.pinv(a), atol=1e-6, rtol=1e-6)


def test_iterative_pinv_scale_is_per_bag() -> None:
    """A bag's result does not depend on the other bags of the batch (the reference scales by a batch max)."""
    a1 = torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    a2 = 7.0 * torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    both = iterative_pinv(torch.cat([a1, a2]), iters=6)
    torch.testing.assert_close(both[:1], iterative_pinv(a1, iters=6))


def test_iterative_pinv_keeps_zero_rows_and_columns() -> None:
    a = torch.zeros(1, 1, 4, 4)
    a[..., 1:, 1:] = torch.softmax(2 * torch.randn(3, 3), dim=-1)
    z = iterative_pinv(a, iters=6)
    assert (z[..., 0, :] == 0).all() and (z[..., :, 0] == 0).all()
    torch.testing.assert_close(z[..., 1:, 1:], iterative_pinv(a[..., 1:, 1:], iters=6))


def test_segment_means_front_empty_segments_and_padding() -> None:
    t = torch.arange(1.0, 13.0).view(1, 1, 12, 1).repeat(2, 1, 1, 1)  # token i has value i + 1
    means, nonempty = segment_means(t, [5, 10], 4)
    # n=5, m=4: segments of 2 after 3 empty slots → [], [t0], [t1, t2], [t3, t4]
    assert nonempty[0].tolist() == [False, True, True, True]
    assert means[0, 0, 1:, 0].tolist() == [1.0, 2.5, 4.5]
    # n=10: segments of 3 after 2 empty slots → [t0], [t1..t3], [t4..t6], [t7..t9]; t10, t11 are padding
    assert nonempty[1].all()
    assert means[1, 0, :, 0].tolist() == [1.0, 3.0, 6.0, 9.0]


def test_exact_softmax_attention_when_landmarks_cover_tokens() -> None:
    torch.manual_seed(1)
    attn = NystromAttention(16, heads=2, n_landmarks=8, pinv_iterations=60, residual_kernel=0).double().eval()
    _identity_out(attn)
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    q, k, v = _heads(attn, x)
    exact = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1) @ v  # (1, H, N, d)
    torch.testing.assert_close(attn(x), exact.transpose(1, 2).flatten(2), atol=1e-6, rtol=1e-6)


def test_attention_rows_are_the_rows_used_for_the_output() -> None:
    attn = NystromAttention(16, heads=2, n_landmarks=3, pinv_iterations=6, residual_kernel=0).eval()
    _identity_out(attn)
    x = torch.randn(1, 11, 16)
    out, rows = attn.attend(x, query_rows=[0, 4])
    assert rows.shape == (1, 2, 2, 11)
    _, _, v = _heads(attn, x)
    heads_out = out.view(1, 11, 2, 8).transpose(1, 2)  # (1, H, N, d)
    torch.testing.assert_close(rows @ v, heads_out[:, :, [0, 4]], atol=1e-5, rtol=1e-4)


def test_padding_invariance_and_garbage_padding() -> None:
    attn = NystromAttention(16, heads=2, n_landmarks=4, residual_kernel=5).eval()
    lengths = [13, 7, 4]
    x = torch.randn(3, 13, 16)
    mask = torch.arange(13)[None] < torch.tensor(lengths)[:, None]
    x[~mask] = float("nan")
    x[2, 5] = float("inf")  # padding of the third bag
    out, rows = attn.attend(x, mask, query_rows=[0])
    assert torch.isfinite(out).all() and (rows[1, ..., 7:] == 0).all()
    for i, n in enumerate(lengths):
        alone, alone_rows = attn.attend(x[i : i + 1, :n], query_rows=[0])
        torch.testing.assert_close(out[i, :n], alone[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rows[i, ..., :n], alone_rows[0], atol=1e-5, rtol=1e-4)


def test_matches_torchmil_reference_on_one_bag() -> None:
    """With a length divisible by the landmarks (no padding in the reference), one bag, no residual
    convolution and an identity output projection, the result equals torchmil's Nyström attention."""
    ref_mod = pytest.importorskip("torchmil.nn.attention.nystrom_attention")
    ref = ref_mod.NystromAttention(16, att_dim=16, n_heads=2, n_landmarks=4, pinv_iterations=6).eval()
    ours = NystromAttention(16, heads=2, n_landmarks=4, pinv_iterations=6, residual_kernel=0).eval()
    _identity_out(ours)
    with torch.no_grad():
        ours.to_qkv.weight.copy_(ref.qkv_nn.weight)
    x = torch.randn(1, 12, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)
