"""MHIM-MIL v2: global recycle network, recycle tokens in training only, query EMA, state."""
from __future__ import annotations

import pytest
import torch

from milkit.models.layers.recycle import GlobalRecycleNetwork
from milkit.training.methods.base import StepContext
from milkit.training.methods.mhim import MHIMv2
from unit_tests.training.mhim_utils import auc, fit, padded_batch, set_up, synthetic_bags, tiny

CTX = StepContext(global_step=0, max_steps=100)


def make(model=None, **kw):
    return set_up(MHIMv2(**kw), model)


def spy_aggregate(model) -> list:
    """Record the (h, mask) every call of ``model.aggregate`` receives."""
    calls: list = []
    original = model.aggregate

    def wrapped(h, mask, coords=None):
        calls.append((h.detach(), mask.clone()))
        return original(h, mask, coords)

    model.aggregate = wrapped
    return calls


def test_recycle_tokens_in_training_not_at_inference() -> None:
    model, method = make(recycle_ratio=0.5, n_global_queries=3, mask_ratio_high=0.1)
    batch = padded_batch([20, 9])
    calls = spy_aggregate(model)
    res = method.training_step(model, batch, CTX)
    h, mask = calls[-1]
    # high mask ceil(0.1·n) = 2 / 1, then half of the rest recycled: 18 → 9 kept, 8 → 4 kept; + 3 tokens each
    assert mask.sum(1).tolist() == [9 + 3, 4 + 3]
    assert mask[1, :7].all() and not mask[1, 7:].any()  # real rows stay a prefix
    assert res.logs["seen_fraction"].item() == pytest.approx((9 + 4) / 29)
    instance_rows = model.reembed(model.embed(batch.x), batch.mask)
    for b, n_kept in enumerate([9, 4]):  # the last 3 rows are new tokens, not instances of the bag
        tokens = h[b, n_kept:n_kept + 3]
        assert not torch.isclose(tokens.unsqueeze(1), instance_rows[b].unsqueeze(0), atol=1e-5).all(-1).any()
    model.eval()
    method.eval()
    method.eval_forward(model, batch)
    h, mask = calls[-1]
    assert torch.equal(mask, batch.mask) and h.shape[1] == 20


def test_no_tokens_without_recycled_instances() -> None:
    model, method = make(recycle_ratio=0.0, mask_ratio_high=0.0)
    calls = spy_aggregate(model)
    before = method.grn.global_queries.clone()
    method.training_step(model, padded_batch([6, 4]), CTX)
    assert calls[-1][1].sum(1).tolist() == [6, 4]
    assert torch.equal(before, method.grn.global_queries)


def test_global_query_ema_and_gradients() -> None:
    grn = GlobalRecycleNetwork(dim=16, n_queries=2, momentum=0.9)
    g0 = grn.global_queries.clone()
    z = torch.randn(3, 2, 16)
    grn.update_queries(z, torch.tensor([True, False, True]))
    torch.testing.assert_close(grn.global_queries, 0.9 * g0 + 0.1 * (z[0] + z[2]).unsqueeze(0) / 2)
    model, method = make(recycle_ratio=0.5)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("grn.attn.") or n.startswith("grn.norm.") for n in trainable)
    assert "grn.global_queries" in method.state_dict() and "teacher.head.weight" in method.state_dict()
    before = method.grn.global_queries.clone()
    method.training_step(model, padded_batch([12, 10]), CTX).loss.backward()
    assert not torch.equal(before, method.grn.global_queries)  # moved by EMA, not by gradient
    assert all(method.get_parameter(n).grad is not None for n in trainable)
    assert all(p.grad is None for p in method.teacher.parameters())


def test_cross_attention_ignores_padding() -> None:
    grn = GlobalRecycleNetwork(dim=16, n_queries=2, dropout=0.0).eval()
    x = torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, True, False, False]])
    z, valid = grn(x, mask)
    x2 = x.clone()
    x2[0, 3:] = 1e3
    torch.testing.assert_close(grn(x2, mask)[0], z)
    torch.testing.assert_close(grn(x[:, :3], mask[:, :3])[0], z)
    _, none = grn(x, torch.zeros_like(mask))
    assert valid.tolist() == [True] and none.tolist() == [False]


def test_state_dict_round_trip() -> None:
    model, method = make()
    method.training_step(model, padded_batch([12]), CTX)
    method.on_optimizer_step(model, CTX)
    _, restored = make(tiny())
    restored.load_state_dict(method.state_dict())
    for (name, a), b in zip(method.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_mhim_v2_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    model = tiny()
    method = MHIMv2(recycle_ratio=0.5, momentum=0.99)
    fit(model, method, synthetic_bags(30, seed=1), epochs=5)
    assert auc(model, method, synthetic_bags(40, seed=2)) > 0.9
