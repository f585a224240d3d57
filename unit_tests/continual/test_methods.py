"""Continual methods: heads, what trains in a later task (on actual parameter values), EWC / LwF terms."""
from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from milkit.continual.methods import EWC, CoMEL, FineTune, LwF, SequentialLoRA, TaskHeads
from milkit.continual.module import ContinualTaskModule
from milkit.continual.tasks import synthetic_task
from milkit.data.bag import collate_bags
from milkit.models import create_model
from milkit.models.layers.lora import adapted_layers

IN_DIM = 8
TINY = {"dim": 8, "depth": 1, "num_heads": 2, "region_size": 2, "mlp_ratio": 2.0, "attn_dim": 4}


def _model():
    return create_model("gdat", IN_DIM, 2, **TINY)


def _loader(task: int):
    bags = synthetic_task(task, in_dim=IN_DIM, n_train=8, n_val=2, n_test=2, bag_size=(3, 6), seed=1).train
    for b in bags:
        b.label += 2 * task
    return torch.utils.data.DataLoader(bags, batch_size=4, collate_fn=collate_bags)


def _fit(model, method, task: int, steps: int = 2, optimizer=None) -> None:
    opt = optimizer or functools.partial(torch.optim.SGD, lr=0.5)
    module = ContinualTaskModule(model, method, opt)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module.train(), _loader(task))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_task_heads_concatenate_and_offset() -> None:
    heads = TaskHeads(4)
    heads.add(2)
    heads.add(3)
    z = torch.randn(5, 4)
    assert heads(z).shape == (5, 5) and heads.offsets == [0, 2] and heads.num_classes == 5
    torch.testing.assert_close(heads(z)[:, 2:], heads.heads[1](z))


@pytest.mark.parametrize("method_cls", [CoMEL, SequentialLoRA])
def test_later_task_changes_only_newest_adapters_and_head(method_cls) -> None:
    model = _model()
    method = method_cls(rank=2, rank_overrides={}, bppl=None)
    method.begin_task(model, 0, 2)
    _fit(model, method, 0)
    method.end_task(model, 0, _loader(0), torch.device("cpu"))
    method.begin_task(model, 1, 2)
    _fit(model, method, 1)
    method.end_task(model, 1, _loader(1), torch.device("cpu"))
    method.begin_task(model, 2, 2)
    before = _snapshot(model)
    _fit(model, method, 2)
    changed = _changed(before, model)
    newest = {f"{name}.adapters.1.{p}" for name, _ in adapted_layers(model) for p in ("down", "up", "scale")}
    expected_head = {"head.heads.2.weight", "head.heads.2.bias"}
    assert changed <= newest | expected_head
    assert expected_head <= changed
    assert any(k.endswith(".up") for k in changed)  # the new adapters learn


def test_comel_updates_stay_outside_earlier_subspaces() -> None:
    """With SGD the update is the projected gradient, so it has no component in any earlier subspace."""
    model = _model()
    method = CoMEL(rank=2, rank_overrides={}, energy=0.5, bppl=None)
    method.begin_task(model, 0, 2)
    _fit(model, method, 0)
    method.end_task(model, 0, _loader(0), torch.device("cpu"))
    method.begin_task(model, 1, 2)
    layers = dict(adapted_layers(model))
    before = {n: (l.newest.down.detach().clone(), l.newest.up.detach().clone()) for n, l in layers.items()}
    _fit(model, method, 1)
    moved = 0
    for name, layer in layers.items():
        d_down = layer.newest.down.detach() - before[name][0]
        d_up = layer.newest.up.detach() - before[name][1]
        assert (d_down @ layer.basis_in).abs().max() < 1e-5
        assert (layer.basis_out.T @ d_up).abs().max() < 1e-5
        moved += int(d_up.abs().max() > 0)
    assert moved > 0


def test_finetune_trains_backbone_but_not_old_heads() -> None:
    model, method = _model(), FineTune()
    method.begin_task(model, 0, 2)
    _fit(model, method, 0)
    method.begin_task(model, 1, 2)
    before = _snapshot(model)
    _fit(model, method, 1)
    changed = _changed(before, model)
    assert not any(k.startswith("head.heads.0") for k in changed)
    assert "embed.0.weight" in changed and "head.heads.1.weight" in changed


def test_ewc_penalty_is_zero_at_the_anchor_and_weighted_by_fisher() -> None:
    model, method = _model(), EWC(lam=2.0)
    method.begin_task(model, 0, 2)
    method.end_task(model, 0, _loader(0), torch.device("cpu"))
    batch = next(iter(_loader(0)))
    out = model(batch.x, batch.mask)
    assert float(method.regularizers(model, batch, out)["ewc"].detach()) == 0.0
    fisher = method.fisher("embed.0.weight")
    assert fisher.shape == model.embed[0].weight.shape and (fisher >= 0).all() and fisher.sum() > 0
    with torch.no_grad():
        model.embed[0].weight.add_(0.1)
    expected = 2.0 * float((fisher * 0.01).sum())
    assert float(method.regularizers(model, batch, out)["ewc"].detach()) == pytest.approx(expected, rel=1e-4)


def test_lwf_distils_old_logits_only() -> None:
    model, method = _model().eval(), LwF(alpha=1.0, temperature=2.0)
    method.begin_task(model, 0, 2)
    method.end_task(model, 0, _loader(0), torch.device("cpu"))
    method.begin_task(model, 1, 2)
    batch = next(iter(_loader(1)))
    out = model(batch.x, batch.mask)
    old = method.teacher(batch.x, batch.mask).logits
    assert old.shape[1] == 2 and out.logits.shape[1] == 4
    target = torch.softmax(old / 2, -1)
    expected = -(target * torch.log_softmax(out.logits[:, :2] / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(method.regularizers(model, batch, out)["lwf"], expected)
    method.train()
    assert not method.teacher.training
