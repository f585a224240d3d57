"""MHIM instance masks: counts, padding, order, voting, randomness under a seed."""
from __future__ import annotations

import pytest
import torch

from milkit.training.methods.masking import (cosine_decay, gather_instances, high_score_select, keep_at_least_one,
                                             mhim_drop_mask, random_select, ratio_count, top_k_select)


def lengths_mask(lengths: list[int], n: int | None = None) -> torch.Tensor:
    n = n or max(lengths)
    return torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def test_ratio_count_is_ceil_with_float_tolerance() -> None:
    lengths = torch.tensor([10, 7, 1, 0, 100])
    assert ratio_count(lengths, 0.3).tolist() == [3, 3, 1, 0, 30]  # 10 × 0.3 is 3.0000000000000004
    assert ratio_count(lengths, 0.07).tolist() == [1, 1, 1, 0, 7]
    assert ratio_count(lengths, 0.0).tolist() == [0] * 5
    assert ratio_count(lengths, 1.0).tolist() == lengths.tolist()


def test_top_k_picks_highest_real_instances_and_never_padding() -> None:
    mask = lengths_mask([5, 3])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2], [0.3, 0.1, 0.2, 99.0, 99.0]])  # padding scores are huge
    sel = top_k_select(scores, mask, torch.tensor([2, 2]))
    assert sel.tolist() == [[False, True, False, True, False], [True, False, True, False, False]]
    low = top_k_select(scores, mask, torch.tensor([2, 1]), largest=False)
    assert low.tolist() == [[True, False, False, False, True], [False, True, False, False, False]]


def test_top_k_ties_break_by_position() -> None:
    sel = top_k_select(torch.zeros(1, 6), torch.ones(1, 6, dtype=torch.bool), torch.tensor([2]))
    assert sel.tolist() == [[True, True, False, False, False, False]]


def test_multi_head_vote_fusion() -> None:
    # k = 2. Head tops: h0 {0, 1}, h1 {0, 2}, h2 {0, 2}: votes 0→3, 2→2, 1→1, so {0, 2}.
    scores = torch.tensor([[[0.9, 0.8, 0.1, 0.0, 0.0],
                            [0.9, 0.0, 0.8, 0.1, 0.0],
                            [0.9, 0.1, 0.8, 0.0, 0.0]]])
    sel = top_k_select(scores, torch.ones(1, 5, dtype=torch.bool), torch.tensor([2]))
    assert sel.tolist() == [[True, False, True, False, False]]
    # equal votes (one each) are broken by the mean score over heads: instance 1 (mean 0.6) beats 0 (0.5)
    tied = torch.tensor([[[1.0, 0.0, 0.0, 0.1], [0.0, 1.2, 0.0, 0.9]]])
    sel = top_k_select(tied, torch.ones(1, 4, dtype=torch.bool), torch.tensor([1]))
    assert sel.tolist() == [[False, True, False, False]]


def test_random_select_counts_support_and_seed() -> None:
    cand = lengths_mask([10, 4, 6], n=12)
    cand[2, 0] = False  # a hole: not a candidate
    k = torch.tensor([3, 4, 2])
    a = random_select(cand, k, torch.Generator().manual_seed(1))
    assert a.sum(1).tolist() == [3, 4, 2]
    assert not (a & ~cand).any()
    assert torch.equal(a, random_select(cand, k, torch.Generator().manual_seed(1)))
    draws = torch.stack([random_select(cand, k, torch.Generator().manual_seed(s)) for s in range(40)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:])
    # more than available: all candidates
    assert torch.equal(random_select(cand, torch.tensor([20, 20, 20])), cand)


def test_random_select_is_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    cand = torch.ones(2000, 10, dtype=torch.bool)
    freq = random_select(cand, torch.full((2000,), 3), g).float().mean(0)
    assert torch.allclose(freq, torch.full((10,), 0.3), atol=0.04)


def test_randomly_ham_draws_within_the_top_pool() -> None:
    scores = torch.arange(20.0).unsqueeze(0)  # instance 19 is the most salient
    mask = torch.ones(1, 20, dtype=torch.bool)
    assert high_score_select(scores, mask, 0.1).nonzero()[:, 1].tolist() == [18, 19]
    hits = torch.zeros(20)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        sel = high_score_select(scores, mask, 0.1, random_frac=0.5, generator=g)[0]
        assert int(sel.sum()) == 2
        hits += sel.float()
    assert hits[:16].sum() == 0 and (hits[16:] > 0).all()  # top 2·β_h = 4 instances, each drawn sometimes


def test_union_of_masks() -> None:
    scores = torch.arange(10.0).unsqueeze(0)
    mask = torch.ones(1, 10, dtype=torch.bool)
    drop = mhim_drop_mask(scores, mask, high=0.2, low=0.3)
    assert drop.nonzero()[:, 1].tolist() == [0, 1, 2, 8, 9]
    g = torch.Generator().manual_seed(3)
    drop = mhim_drop_mask(scores, mask, high=0.2, rand=0.5, generator=g)
    assert drop[0, 8:].all() and 5 <= int(drop.sum()) <= 7


def test_padding_is_never_masked_and_one_instance_survives() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        lengths = torch.randint(0, 40, (4,), generator=g).tolist()
        mask = lengths_mask(lengths, n=40)
        scores = torch.randn(4, 40, generator=g)
        scores[~mask] = 1e9  # padded scores must not attract the high mask
        ratios = torch.rand(3, generator=g).tolist()
        drop = mhim_drop_mask(scores, mask, high=ratios[0], low=ratios[1], rand=ratios[2], generator=g)
        assert not (drop & ~mask).any()
        kept = (mask & ~drop).sum(1)
        assert ((kept >= 1) | (mask.sum(1) == 0)).all(), (trial, lengths, kept)
    everything = torch.ones(3, 5, dtype=torch.bool)
    assert (~keep_at_least_one(everything, everything)).sum(1).tolist() == [1, 1, 1]


def test_masks_are_deterministic_under_a_seed() -> None:
    mask = lengths_mask([30, 17])
    scores = torch.randn(2, 30)

    def draw(seed: int) -> torch.Tensor:
        return mhim_drop_mask(scores, mask, high=0.1, high_random_frac=0.5, low=0.1, rand=0.5,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    torch.manual_seed(5)
    a = mhim_drop_mask(scores, mask, rand=0.5)
    torch.manual_seed(5)
    assert torch.equal(a, mhim_drop_mask(scores, mask, rand=0.5))


def test_gather_instances_keeps_order_and_repads() -> None:
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    coords = torch.arange(2 * 5).view(2, 5, 1).expand(2, 5, 2)
    keep = torch.tensor([[True, False, True, True, False], [False, True, False, False, False]])
    mask, (gx, gc, none) = gather_instances(keep, x, coords, None)
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(gx[0], x[0, [0, 2, 3]]) and torch.equal(gx[1, 0], x[1, 1])
    assert torch.equal(gc[0, :, 0], torch.tensor([0, 2, 3])) and none is None


@pytest.mark.parametrize(("progress", "expected"), [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0), (2.0, 0.0)])
def test_cosine_decay(progress: float, expected: float) -> None:
    assert cosine_decay(1.0, 0.0, progress) == pytest.approx(expected)
