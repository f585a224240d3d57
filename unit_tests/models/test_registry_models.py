"""Contract tests run for every registered model (tiny variant): a new model is tested automatically.
The invariance and gradient tests run under every task (classification, survival NLL, survival Cox)."""
from __future__ import annotations

import pytest
import torch

from milkit.errors import ConfigError, MILKitError
from milkit.models import create_model, list_models, model_info
from milkit.tasks import ClassificationTask, SurvivalTask, Task
from milkit.types import MILOutput

IN_DIM = 24
MODELS = list_models()


def _survival(loss: str) -> SurvivalTask:
    task = SurvivalTask(loss=loss)
    task.load_state({"inner_edges": [10.0, 20.0, 30.0]})
    return task


TASKS = {"classification": ClassificationTask(), "survival_nll": _survival("nll"), "survival_cox": _survival("cox")}
#: (target y for 2 bags, output width) per task; survival targets are (time, event), both with events for Cox
TARGETS = {"classification": (torch.tensor([0, 2]), 3), "survival_nll": (torch.tensor([[35.0, 1.0], [25.0, 0.0]]), 4),
           "survival_cox": (torch.tensor([[5.0, 1.0], [25.0, 1.0]]), 1)}


def task_outputs(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """What the task reads from the logits (probabilities, or risk and survival curve), as one tensor."""
    return torch.cat([v.reshape(len(logits), -1) for v in task.predict(logits).values()], 1)


def build(name: str, num_classes: int = 3):
    return create_model(name, in_dim=IN_DIM, num_classes=num_classes, **model_info(name)["tiny_kwargs"])


def bags(lengths: list[int], d: int = IN_DIM, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    x = torch.randn(len(lengths), n, d, generator=g)
    mask = torch.zeros(len(lengths), n, dtype=torch.bool)
    for i, length in enumerate(lengths):
        mask[i, :length] = True
    coords = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(1), indexing="ij"), -1).reshape(n, 2)
    coords = coords.unsqueeze(0).expand(len(lengths), -1, -1).float()
    return x, mask, coords


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_output_shapes(name: str, num_classes: int) -> None:
    model = build(name, num_classes).eval()
    x, mask, coords = bags([9, 5])
    out = model(x, mask, coords)
    assert isinstance(out, MILOutput)
    assert out.logits.shape == (2, num_classes)
    assert torch.isfinite(out.logits).all()
    if model_info(name)["instance_scores"]:
        assert out.instance_scores is not None and out.instance_scores.shape == (2, 9)
        assert torch.isneginf(out.instance_scores[1, 5:]).all(), "padded scores must be -inf"
        assert torch.isfinite(out.instance_scores[0]).all()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_padding_invariance(name: str, task: str) -> None:
    """A bag alone and the same bag padded inside a batch give the same outputs (and task predictions)."""
    model = build(name, TARGETS[task][1]).eval()
    x, mask, coords = bags([11, 4, 7])
    with torch.no_grad():
        batched = model(x, mask, coords)
        for i, length in enumerate([11, 4, 7]):
            alone = model(x[i : i + 1, :length], None, coords[i : i + 1, :length])
            torch.testing.assert_close(alone.logits[0], batched.logits[i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(task_outputs(TASKS[task], alone.logits)[0],
                                       task_outputs(TASKS[task], batched.logits)[i], atol=1e-5, rtol=1e-4)
            if alone.instance_scores is not None:
                torch.testing.assert_close(alone.instance_scores[0], batched.instance_scores[i, :length],
                                           atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_padding_content_is_ignored(name: str) -> None:
    """Changing the values at padded positions changes nothing."""
    model = build(name).eval()
    x, mask, coords = bags([8, 3])
    x2 = x.clone()
    x2[~mask] = 1e3 * torch.randn_like(x2[~mask])
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask, coords).logits, model(x2, mask, coords).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", [n for n in MODELS if model_info(n)["permutation_invariant"]])
def test_permutation_invariance(name: str, task: str) -> None:
    model = build(name, TARGETS[task][1]).eval()
    x, _, coords = bags([13])
    perm = torch.randperm(13)
    with torch.no_grad():
        a, b = model(x, None, coords), model(x[:, perm], None, coords[:, perm])
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(task_outputs(TASKS[task], a.logits), task_outputs(TASKS[task], b.logits),
                               atol=1e-5, rtol=1e-4)
    if a.instance_scores is not None:
        torch.testing.assert_close(a.instance_scores[:, perm], b.instance_scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name: str, task: str) -> None:
    y, width = TARGETS[task]
    model = build(name, width).train()
    x, mask, coords = bags([10, 6])
    out = model(x, mask, coords)
    loss = TASKS[task].loss(out.logits, y)
    assert torch.isfinite(loss)
    for v in {**out.aux_losses, **model.target_losses(out, y, TASKS[task])}.values():
        loss = loss + v
    loss.backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    if not TASKS[task].categorical:  # CLAM's instance clustering needs class labels: off under survival
        missing = [n for n in missing if not n.startswith("instance_classifiers.")]
    # A zero gradient is expected where the outputs cannot depend on the parameter (the bias of the last
    # attention layer shifts all logits before a softmax); such a parameter counts only if moving it
    # changes the outputs.
    model.eval()
    with torch.no_grad():
        before = model(x, mask, coords).logits
        for n in [n for n in missing if params[n].grad is not None]:
            params[n].add_(1.0)
            shift = model(x, mask, coords).logits - before
            # the Cox partial likelihood is blind to a shift shared by all bags (e.g. the head's bias)
            if torch.allclose(shift, torch.zeros_like(shift), atol=1e-6) or (
                    task == "survival_cox" and torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-5)):
                missing.remove(n)
            params[n].sub_(1.0)
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_single_instance_bag(name: str) -> None:
    model = build(name).eval()
    x, _, coords = bags([1])
    out = model(x, None, coords)
    assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_wrong_feature_dim_is_a_clear_error(name: str) -> None:
    model = build(name)
    with pytest.raises(ConfigError, match="feature dimension 7 does not match the model's in_dim 24"):
        model(torch.randn(1, 5, 7))


def test_unknown_model_name() -> None:
    with pytest.raises(MILKitError, match="unknown model 'abmill'"):
        create_model("abmill", in_dim=4, num_classes=2)


def test_registry_metadata_is_complete() -> None:
    for name in MODELS:
        info = model_info(name)
        assert info["mil_assumption"] in {"standard", "threshold", "none"}
        assert isinstance(info["tiny_kwargs"], dict)
