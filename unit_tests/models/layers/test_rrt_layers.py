"""R²T blocks: region geometry, EPEG equivalence, the encoder against a loop reference, masking, memory."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from milkit.errors import ConfigError
from milkit.models.layers.epeg import EPEG
from milkit.models.layers.regions import RegionLayout, fold_geometry
from milkit.models.layers.rrt import RegionAttention, RRTEncoder

SMALL = {"num_heads": 2, "crmsa_heads": 2, "epeg_k": 5, "proj_drop": 0.0}


def randomized(enc: RRTEncoder) -> RRTEncoder:
    """Non-zero biases and norm affines (upstream's init zeroes them, which would hide padding leaks)."""
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return enc


def lengths_mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]


# --- geometry -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "h", "m", "pad"), [(50, 8, 1, 14), (100, 16, 2, 156), (500, 24, 3, 76),
                                                  (1000, 32, 4, 24), (2000, 48, 6, 304), (9000, 96, 12, 216),
                                                  (20000, 144, 18, 736), (1, 8, 1, 63)])
def test_fold_geometry_matches_upstream_table(n: int, h: int, m: int, pad: int) -> None:
    """Upstream's padding table for region_num=8 (research note §2.2.1)."""
    assert fold_geometry(n, 8) == (h, 8, m)
    assert h * h - n == pad


def test_fold_geometry_region_size() -> None:
    assert fold_geometry(1000, region_size=5) == (35, 7, 5)  # ceil(sqrt(1000)) = 32 → 35
    assert fold_geometry(1, region_size=3) == (3, 1, 3)
    assert fold_geometry(10, region_num=8, region_size=0) == (8, 8, 1)  # 0 = unset, as upstream
    with pytest.raises(ConfigError, match="region_num"):
        fold_geometry(10, region_num=0)


def test_layout_regions_are_square_windows_of_the_row_major_fold() -> None:
    """n=12, 2 regions per side: the 4×4 fold has windows {0,1,4,5}, {2,3,6,7}, {8,9,·,·}, {10,11,·,·}."""
    layout = RegionLayout.build(torch.ones(1, 12, dtype=torch.bool), region_num=2)
    slots = torch.where(layout.valid.view(-1), layout.index, -1).view(4, 4).tolist()
    assert slots == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, -1, -1], [10, 11, -1, -1]]


def test_layout_round_trip_and_non_contiguous_mask() -> None:
    mask = lengths_mask([30, 7, 1])
    mask[0, [3, 10, 11]] = False  # interior holes behave as removed instances
    x = torch.randn(3, 30, 4)
    layout = RegionLayout.build(mask, region_num=3)
    assert layout.valid.sum() == mask.sum()  # every real instance has exactly one slot
    back = layout.scatter(layout.gather(x))
    torch.testing.assert_close(back, x * mask.unsqueeze(-1))
    # the holed bag is laid out exactly as the bag with those instances removed
    kept = x[0, mask[0]][None]
    alone = RegionLayout.build(torch.ones(1, kept.shape[1], dtype=torch.bool), region_num=3)
    torch.testing.assert_close(layout.gather(x)[0, :, : alone.shape[2]], alone.gather(kept)[0])


# --- EPEG -----------------------------------------------------------------------------------------------
def test_epeg_on_queries_equals_epeg_on_logits() -> None:
    """softmax(e + Conv(e)) with e = s·q kᵀ (upstream) == softmax(s·(q + Conv(q)) kᵀ) (milkit)."""
    g, heads, length, d = 3, 4, 11, 8
    pe = EPEG(heads, 7)
    with torch.no_grad():
        pe.bias.normal_()  # inert: a per-head constant on every logit
    q, k = torch.randn(g, heads, length, d), torch.randn(g, heads, length, d)
    e = q @ k.transpose(-1, -2) * d**-0.5
    upstream = (e + F.conv2d(e, pe.weight, pe.bias, padding=(3, 0), groups=heads)).softmax(-1)
    ours = (pe(q) @ k.transpose(-1, -2) * d**-0.5).softmax(-1)
    torch.testing.assert_close(ours, upstream, atol=1e-5, rtol=1e-4)
    assert not pe.bias.requires_grad


def test_epeg_zeroes_masked_queries_like_region_edges() -> None:
    """A masked suffix is the same as a shorter region (zero padding at the edge)."""
    pe = EPEG(2, 5)
    q = torch.randn(1, 2, 9, 3)
    valid = torch.arange(9)[None] < 6
    torch.testing.assert_close(pe(q, valid)[:, :, :6], pe(q[:, :, :6]))


def test_epeg_rejects_even_kernels() -> None:
    with pytest.raises(ConfigError, match="epeg_k must be a positive odd number, got 4"):
        EPEG(2, 4)


# --- encoder vs. a loop reference -------------------------------------------------------------------------
def ref_attention(attn: RegionAttention, x: torch.Tensor) -> torch.Tensor:
    """Upstream InnerAttention on one group ``(L, C)``: materialised logits, EPEG on the logits."""
    length, c = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).view(length, 3, heads, c // heads).permute(1, 2, 0, 3)
    e = q * (c // heads) ** -0.5 @ k.transpose(-1, -2)  # (heads, L, L)
    if attn.pe is not None:
        pad = attn.pe.kernel_size // 2
        e = e + F.conv2d(e[None], attn.pe.weight, attn.pe.bias, padding=(pad, 0), groups=heads)[0]
    return attn.proj((e.softmax(-1) @ v).transpose(0, 1).reshape(length, c))


def ref_regions(n: int, region_num: int) -> list[list[int]]:
    """Instance indices of each region (upstream window partition), padding dropped."""
    h, s, m = fold_geometry(n, region_num)
    return [[t for i in range(m) for j in range(m) if (t := (ri * m + i) * h + ci * m + j) < n]
            for ri in range(s) for ci in range(s)]


def ref_encoder(enc: RRTEncoder, h: torch.Tensor, region_num: int) -> torch.Tensor:
    """R²T on one bag ``(n, C)`` with explicit loops over regions, restricted to real instances."""
    regions = [r for r in ref_regions(h.shape[0], region_num) if r]
    x = h
    for layer in enc.layers:
        y, z = layer.norm(x), torch.zeros_like(x)
        for idx in regions:
            z[idx] = ref_attention(layer.fn.attn, y[idx])
        x = x + z
    cr = enc.cr_msa.fn
    y, z = enc.cr_msa.norm(x), torch.zeros_like(x)
    logits = [y[idx] @ cr.phi for idx in regions]  # (P, k) each
    reps = torch.stack([lg.softmax(0).T @ y[idx] for lg, idx in zip(logits, regions)])  # (R, k, C)
    reps = torch.stack([ref_attention(cr.attn, reps[:, i]) for i in range(cr.k)], 1)
    for lg, idx, rep in zip(logits, regions, reps):
        lo, hi = lg.min(0).values, lg.max(0).values
        z[idx] = ((lg - lo) / (hi - lo + 1e-8) * lg.softmax(1)) @ rep
    return enc.norm(x + z)


@pytest.mark.parametrize("n", [144, 100, 37, 1])
def test_encoder_matches_loop_reference(n: int) -> None:
    """n=144 folds without padding (12×12, 4 regions/side), i.e. exactly upstream's computation; the other
    sizes check that padding is excluded everywhere."""
    torch.manual_seed(1)
    enc = randomized(RRTEncoder(16, region_num=4, crmsa_region_num=4, **SMALL)).eval()
    h = torch.randn(1, n, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc(h)[0], ref_encoder(enc, h[0], 4), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"region_size": 3, "crmsa_region_num": None}, {"crmsa_mlp": True, "all_shortcut": True},
                                {"num_rmsa_layers": 2, "epeg_k": 0}, {"crmsa_region_num": 2}])
def test_encoder_padding_invariance_and_ignores_padding(kw: dict) -> None:
    enc = randomized(RRTEncoder(16, **{**SMALL, "region_num": 3, **kw})).eval()
    lengths = [50, 9, 1, 23]
    mask = lengths_mask(lengths)
    x = torch.randn(len(lengths), 50, 16)
    x2 = torch.where(mask.unsqueeze(-1), x, 1e3 * torch.randn_like(x))
    with torch.no_grad():
        out, out2 = enc(x, mask), enc(x2, mask)
        torch.testing.assert_close(out, out2, atol=1e-5, rtol=1e-4)
        assert (out[~mask] == 0).all()
        for b, n in enumerate(lengths):
            torch.testing.assert_close(enc(x[b : b + 1, :n])[0], out[b, :n], atol=1e-5, rtol=1e-4)


def test_encoder_is_order_dependent() -> None:
    enc = RRTEncoder(16, region_num=2, **SMALL).eval()
    x = torch.randn(1, 40, 16)
    perm = torch.randperm(40)
    with torch.no_grad():
        assert not torch.allclose(enc(x)[:, perm], enc(x[:, perm]), atol=1e-4)


def test_encoder_errors() -> None:
    with pytest.raises(ConfigError, match="width 30 is not divisible by num_heads 8"):
        RRTEncoder(30)
    with pytest.raises(ConfigError, match="built for width 16 but receives embeddings of width 8"):
        RRTEncoder(16, **SMALL)(torch.randn(1, 5, 8))


def test_attention_memory_is_linear_in_bag_size() -> None:
    """Bytes saved for backward grow ~linearly with N (4× N → ~4×), not like the N²/64 logit maps (16×)."""

    def saved_bytes(n: int) -> int:
        enc = RRTEncoder(16, **SMALL)
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            enc(torch.randn(1, n, 16, requires_grad=True))
        return total

    ratio = saved_bytes(16384) / saved_bytes(4096)  # regions of 64 → 256 instances
    assert ratio < 5.0, ratio
