"""Survival loss, bins and metrics against hand computations and brute force."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from milkit.tasks import SurvivalTask
from milkit.tasks.survival_data import quantile_edges
from milkit.tasks.survival_losses import nll_hazard_loss, nll_risk, survival_curve, time_bins
from milkit.tasks.survival_metrics import bootstrap_cindex_ci, harrell_cindex, logrank_test, survival_scores


def test_nll_matches_hand_computed_example() -> None:
    """h = σ(z); S_k = Π(1-h); uncensored in bin y: -log S_{y-1} - log h_y; censored: -log S_y."""
    z = torch.tensor([[0.0, 1.0, -1.0, 2.0]] * 4)
    h = [0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-2))]
    s = np.cumprod([1 - v for v in h])
    bins, events = torch.tensor([0, 3, 0, 3]), torch.tensor([1, 1, 0, 0])
    expected = [-math.log(h[0]),                                # uncensored, first bin (S_{-1} = 1)
                -math.log(s[2]) - math.log(h[3]),                # uncensored, last bin
                -math.log(s[0]),                                 # censored, first bin
                -math.log(s[3])]                                 # censored, last bin
    for i in range(4):
        got = nll_hazard_loss(z[i:i + 1], bins[i:i + 1], events[i:i + 1])
        assert float(got) == pytest.approx(expected[i], rel=1e-6)
    assert float(nll_hazard_loss(z, bins, events)) == pytest.approx(np.mean(expected), rel=1e-6)
    # alpha weights the uncensored term: (1-α)·(all) + α·uncensored
    a = 0.4
    want = np.mean([(1 - a) * e + a * e * ev for e, ev in zip(expected, [1, 1, 0, 0])])
    assert float(nll_hazard_loss(z, bins, events, alpha=a)) == pytest.approx(want, rel=1e-6)
    torch.testing.assert_close(survival_curve(z[:1])[0].double(), torch.tensor(s), rtol=1e-6, atol=1e-7)
    assert float(nll_risk(z[:1])) == pytest.approx(-s.sum(), rel=1e-6)


def test_nll_gradient_is_finite_when_saturated() -> None:
    z = torch.tensor([[40.0, -40.0, 40.0, -40.0]], requires_grad=True)
    nll_hazard_loss(z, torch.tensor([3]), torch.tensor([1])).backward()
    assert torch.isfinite(z.grad).all()


def brute_force_cindex(risk, time, event) -> float:
    """O(n²) Harrell: i with an event is comparable to j with t_j > t_i, or t_j = t_i and j censored."""
    num = den = 0.0
    for i in range(len(risk)):
        if not event[i]:
            continue
        for j in range(len(risk)):
            if time[j] > time[i] or (time[j] == time[i] and not event[j]):
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cindex_matches_brute_force_with_ties(seed: int) -> None:
    g = np.random.default_rng(seed)
    time = g.integers(1, 15, 60).astype(float)          # many tied times
    event = g.random(60) < 0.6
    risk = g.integers(0, 6, 60).astype(float)           # many tied risks
    got = harrell_cindex(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert got == pytest.approx(brute_force_cindex(risk, time, event), abs=1e-9)


def test_bootstrap_ci_brackets_the_cindex_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    time = torch.rand(80, generator=g) * 100
    event = torch.rand(80, generator=g) < 0.6
    risk = -time + 20 * torch.randn(80, generator=g)
    c = harrell_cindex(risk, time, event)
    low, high = bootstrap_cindex_ci(risk, time, event, n=500, seed=3)
    assert low < c < high and high - low < 0.3
    assert (low, high) == bootstrap_cindex_ci(risk, time, event, n=500, seed=3)


def test_survival_scores_and_logrank_separate_good_from_random_risk() -> None:
    g = torch.Generator().manual_seed(1)
    time = torch.rand(120, generator=g) * 100
    event = torch.rand(120, generator=g) < 0.7
    edges = torch.tensor([25.0, 50.0, 75.0])
    good = survival_scores(-time, time, event, None, edges)
    noise = survival_scores(torch.randn(120, generator=g), time, event, None, edges)
    assert good["cindex"] > 0.95 and good["td_auc"] > 0.9 and abs(noise["cindex"] - 0.5) < 0.1
    assert math.isnan(good["ibs"])  # no survival curve (Cox head)
    split = (-time > (-time).median()).numpy()
    assert logrank_test(time.numpy(), event.numpy(), split) < 1e-6
    assert logrank_test(time.numpy(), event.numpy(), torch.rand(120, generator=g).numpy() > 0.5) > 0.01


@pytest.mark.parametrize("copies", [2, 3])
def test_survival_scores_unchanged_when_the_set_is_repeated(copies: int) -> None:
    """Under DDP every rank feeds the gathered test set and torchmetrics concatenates the ranks' states: the
    metrics must not change when every bag appears `copies` times."""
    g = torch.Generator().manual_seed(4)
    time = torch.rand(90, generator=g) * 100
    event = torch.rand(90, generator=g) < 0.6
    risk = -time + 30 * torch.randn(90, generator=g)
    edges = torch.tensor([25.0, 50.0, 75.0])
    surv = torch.sigmoid((time[:, None] - edges) / 20 + torch.randn(90, 3, generator=g))  # S at the edges
    once = survival_scores(risk, time, event, surv, edges)
    repeated = survival_scores(risk.repeat(copies), time.repeat(copies), event.repeat(copies),
                               surv.repeat(copies, 1), edges)
    assert all(not math.isnan(v) for v in once.values())
    assert repeated == pytest.approx(once, abs=1e-6)


def test_bins_follow_pandas_cut_and_training_fold_only() -> None:
    time = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 50, 60, 70, 80])
    event = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0])
    edges = quantile_edges(time, event, 4, "x")
    np.testing.assert_allclose(edges, pd.qcut(time[event == 1], 4, retbins=True)[1][1:-1])
    want = pd.cut(time, [-np.inf, *edges, np.inf], right=False, labels=False)
    assert time_bins(torch.tensor(time), torch.tensor(edges)).tolist() == list(want)
    task = SurvivalTask()
    train = pd.DataFrame({"time": time[:8], "event": event[:8]})
    task.fit(train)
    np.testing.assert_allclose(task.inner_edges, quantile_edges(time[:8], event[:8], 4, "x"))
