"""BPPL: instance probabilities, pseudo-label rules, loss value and the τ2 schedule."""
from __future__ import annotations

import math

import torch

from milkit.continual.bppl import BPPL, bppl_loss, bppl_pseudo_labels, instance_probabilities
from milkit.types import MILOutput


def test_instance_probabilities_are_min_max_normalised_attention() -> None:
    scores = torch.tensor([[0.0, math.log(2.0), math.log(3.0), float("-inf")]])
    mask = torch.tensor([[True, True, True, False]])
    p = instance_probabilities(scores, mask)
    # softmax = [1, 2, 3] / 6 → min-max → [0, 0.5, 1]; padding → 0
    torch.testing.assert_close(p, torch.tensor([[0.0, 0.5, 1.0, 0.0]]), atol=1e-6, rtol=0)


def _bag():
    """One positive bag: instance 0 is the witness, 1 and 2 background, 3 padding. E = 2."""
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [5.0, 5.0]]])
    attention = torch.tensor([[0.8, 0.1, 0.1, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    return h, attention, mask


def test_pseudo_labels_follow_prototypes_and_thresholds() -> None:
    h, attention, mask = _bag()
    logits = torch.tensor([[0.0, 5.0]])  # confidence σ(5) ≈ 0.993 > 0.95, predicts class 1
    y, positive = torch.tensor([1]), torch.tensor([True])
    labels, conf = bppl_pseudo_labels(h, attention, mask, logits, y, positive, tau1=0.95, tau2=0.5, temperature=0.1)
    # prototypes: F+ = 0.8 h0 + 0.1 h1 + 0.1 h2; F- = (0.2 h0 + 0.9 h1 + 0.9 h2) / 2
    pos = 0.8 * h[0, 0] + 0.1 * h[0, 1] + 0.1 * h[0, 2]
    neg = (0.2 * h[0, 0] + 0.9 * h[0, 1] + 0.9 * h[0, 2]) / 2.0
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    expected = [int(cos(h[0, i], pos) > cos(h[0, i], neg)) for i in range(3)]
    assert expected == [1, 0, 0]
    assert labels[0, :3].tolist() == expected and labels[0, 3] == -1
    c0 = 1 / (1 + math.exp(-abs(cos(h[0, 0], pos) - cos(h[0, 0], neg)) / 0.1))
    torch.testing.assert_close(conf[0, 0], torch.tensor(c0), atol=1e-5, rtol=0)
    # a higher τ2 drops the least confident instances only
    tau2 = float(conf[0, :3].sort().values[1])
    strict, _ = bppl_pseudo_labels(h, attention, mask, logits, y, positive, 0.95, tau2, 0.1)
    assert ((strict[0, :3] >= 0) == (conf[0, :3] > tau2)).all() and (strict[0, :3] == -1).sum() == 2


def test_no_pseudo_labels_for_negative_wrong_or_unconfident_bags() -> None:
    h, attention, mask = _bag()
    args = dict(tau1=0.95, tau2=0.5, temperature=0.1)
    cases = [
        (torch.tensor([[0.0, 5.0]]), torch.tensor([1]), torch.tensor([False])),  # not a positive bag
        (torch.tensor([[5.0, 0.0]]), torch.tensor([1]), torch.tensor([True])),  # predicted wrongly
        (torch.tensor([[0.0, 1.0]]), torch.tensor([1]), torch.tensor([True])),  # confidence σ(1) < 0.95
    ]
    for logits, y, positive in cases:
        labels, _ = bppl_pseudo_labels(h, attention, mask, logits, y, positive, **args)
        assert (labels == -1).all()


def test_bppl_loss_value() -> None:
    prob = torch.tensor([[0.9, 0.2, 0.5, 0.0]])
    labels = torch.tensor([[1, 0, -1, -1]])
    mask = torch.tensor([[True, True, True, False]])
    expected = (-math.log(0.9) - math.log(0.8)) / 3  # (n_sel / n) · mean NLL = sum NLL / n
    torch.testing.assert_close(bppl_loss(prob, labels, mask), torch.tensor(expected), atol=1e-6, rtol=0)


def test_tau2_schedule_and_gradient_through_attention_only() -> None:
    bppl = BPPL(tau1=0.5, tau=0.5, temperature=0.1)
    h, _, mask = _bag()
    scores = torch.tensor([[2.0, 0.5, 0.0, float("-inf")]], requires_grad=True)
    h = h.clone().requires_grad_(True)
    out = MILOutput(logits=torch.tensor([[0.0, 3.0]]), instance_scores=scores, extras={"instance_embeddings": h})
    loss, logs = bppl(out, mask, torch.tensor([1]), torch.tensor([1]))
    assert logs["bppl_selected"] > 0
    loss.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    assert h.grad is None  # pseudo-labels are constants
    conf = torch.sigmoid(torch.tensor(3.0))
    bppl.end_epoch()
    torch.testing.assert_close(bppl.tau2, 0.5 * (1 + 0.5 * conf))
    assert bppl.quality_count == 0
