"""MHIM-MIL v1 as a TrainingMethod: teacher, EMA, masking from teacher scores, losses, inference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from milkit.errors import ConfigError
from milkit.models.base import MILModel
from milkit.training.methods.base import StepContext
from milkit.training.methods.mhim import MHIM, MHIMv2, class_probability, soft_target_cross_entropy
from milkit.types import BagBatch, BagFeatures
from unit_tests.training.mhim_utils import IN_DIM, auc, fit, padded_batch, set_up, synthetic_bags, tiny

CTX = StepContext(global_step=0, max_steps=100)


def make(model=None, **kw):
    return set_up(MHIM(**kw), model)


def capture_inputs(model: nn.Module) -> list:
    seen: list = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args))
    return seen


def test_ema_arithmetic() -> None:
    model, method = make(momentum=0.9)
    before = [p.clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    method.on_optimizer_step(model, CTX)
    for t0, t, s in zip(before, method.teacher.parameters(), model.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
    frozen = MHIM(momentum=1.0)
    frozen.setup(model)
    snapshot = [p.clone() for p in frozen.teacher.parameters()]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    frozen.on_optimizer_step(model, CTX)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, frozen.teacher.parameters()))


def test_schedules() -> None:
    method = MHIM(mask_ratio_high=0.04, high_decay="cosine", momentum=0.99, momentum_schedule="cosine")
    at = lambda step: StepContext(global_step=step, max_steps=100)  # noqa: E731
    assert [method.current_mask_ratio_high(at(s)) for s in (0, 50, 100)] == pytest.approx([0.04, 0.02, 0.0])
    assert [method.current_momentum(at(s)) for s in (0, 50, 100)] == pytest.approx([0.99, 0.995, 1.0])
    fixed = MHIM(mask_ratio_high=0.04, high_decay="none")
    assert fixed.current_mask_ratio_high(at(50)) == 0.04 and fixed.current_momentum(at(50)) == 0.9999


def test_no_gradient_reaches_the_teacher() -> None:
    model, method = make()
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert not [p for p in method.parameters() if p.requires_grad]  # the optimiser gets nothing of the teacher
    method.training_step(model, padded_batch([9, 14]), CTX).loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_teacher_mode() -> None:
    batch = padded_batch([12])
    for train_mode in (False, True):
        _, method = make(tiny(dropout=0.5), teacher_train_mode=train_mode)
        method.train()  # what Lightning does at every epoch start
        modes = []
        method.teacher.embed.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
        a, b = method.teacher_view(batch), method.teacher_view(batch)
        assert modes == [train_mode] * 2 and method.teacher.training  # back to the method's mode afterwards
        # paper: eval mode, no dropout, the same view twice; released code: dropout active
        assert torch.equal(a[1], b[1]) != train_mode


def test_student_sees_only_kept_instances() -> None:
    model, method = make()
    batch = padded_batch([6, 4])
    drop = torch.tensor([[True, False, False, True, False, False], [False, True, False, False, False, False]])
    method.drop_mask = lambda scores, mask, ctx: drop
    seen = capture_inputs(model)
    method.training_step(model, batch, CTX)
    x, mask, coords = seen[0]
    assert mask.tolist() == [[True] * 4, [True, True, True, False]]
    torch.testing.assert_close(x[0], batch.x[0, [1, 2, 4, 5]])
    torch.testing.assert_close(x[1, :3], batch.x[1, [0, 2, 3]])
    torch.testing.assert_close(coords[0, :, 0], torch.tensor([1.0, 2.0, 4.0, 5.0]))


def test_high_score_masking_removes_the_teachers_top_instance() -> None:
    model, method = make(mask_ratio_high=0.1, high_random_frac=1.0, mask_ratio_rand=0.0, high_decay="none")
    batch = padded_batch([10, 7])
    scores, _ = method.teacher_view(batch)
    top = scores.masked_fill(~batch.mask, float("-inf")).argmax(1)
    seen = capture_inputs(model)
    method.training_step(model, batch, CTX)
    x, mask, _ = seen[0]
    assert mask.sum(1).tolist() == [9, 6]
    for b in range(2):
        assert not (x[b, mask[b]] == batch.x[b, top[b]]).all(-1).any()


def test_losses() -> None:
    s, t = torch.randn(3, 16), torch.randn(3, 16)
    manual = -(F.softmax(t / 0.1, -1) * F.log_softmax(s, -1)).sum(-1).mean()
    torch.testing.assert_close(soft_target_cross_entropy(s, t, 1.0, 0.1), manual)
    per_class = soft_target_cross_entropy(s.view(3, 2, 8), t.view(3, 2, 8))
    rows = [soft_target_cross_entropy(s.view(3, 2, 8)[:, c], t.view(3, 2, 8)[:, c]) for c in range(2)]
    torch.testing.assert_close(per_class, sum(rows) / 2)
    model, method = make(consistency_weight=0.3)
    res = method.training_step(model, padded_batch([8, 11]), CTX)
    torch.testing.assert_close(res.loss.detach(), res.logs["task_loss"] + 0.3 * res.logs["consistency"])
    assert 0 < float(res.logs["seen_fraction"]) < 1


def test_inference_uses_the_student_on_all_instances() -> None:
    model, method = make()
    batch = padded_batch([7, 12])
    model.eval()
    expected = model(batch.x, batch.mask).logits
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.mul_(-3.0)
    torch.testing.assert_close(method.eval_forward(model, batch).logits, expected)


def save_baseline(tmp_path, model: MILModel, lightning: bool = True):
    state = {f"model.{k}": v for k, v in model.state_dict().items()} if lightning else model.state_dict()
    if lightning:
        state["method.teacher.head.weight"] = torch.zeros(1)  # a previous MHIM run's teacher is ignored
    path = tmp_path / ("base.ckpt" if lightning else "base.pt")
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": {}}} if lightning else state, path)
    return str(path)


@pytest.mark.parametrize("lightning", [True, False])
def test_teacher_and_student_init_from_a_baseline(tmp_path, lightning: bool) -> None:
    baseline = tiny()
    path = save_baseline(tmp_path, baseline, lightning)
    student, method = make(teacher_init=path, init_student="fc")
    for (name, t), b in zip(method.teacher.state_dict().items(), baseline.state_dict().values()):
        assert torch.equal(t, b), name
    assert torch.equal(student.embed[0].weight, baseline.embed[0].weight)
    assert not torch.equal(student.head.weight, baseline.head.weight)
    student_all, _ = make(teacher_init=path, init_student="all")
    assert all(torch.equal(a, b) for a, b in zip(student_all.state_dict().values(), baseline.state_dict().values()))
    fresh = tiny()
    before = [p.clone() for p in fresh.parameters()]
    make(fresh, teacher_init=path, init_student="none")
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))


def test_bad_baselines_and_config_are_clear_errors(tmp_path) -> None:
    path = save_baseline(tmp_path, tiny(attn_dim=4))
    with pytest.raises(ConfigError, match="method.teacher_init=.*shape mismatch"):
        make(teacher_init=path)
    with pytest.raises(ConfigError, match="method.teacher_init: checkpoint .*missing.ckpt does not exist"):
        make(teacher_init=str(tmp_path / "missing.ckpt"))
    other = save_baseline(tmp_path, tiny("gated_abmil"))
    with pytest.raises(ConfigError, match="do not match the model"):
        make(teacher_init=other)
    with pytest.raises(ConfigError, match=r"method.mask_ratio_high must be in \[0, 1\], got 1.5"):
        MHIM(mask_ratio_high=1.5)
    with pytest.raises(ConfigError, match="method.score must be one of attention, class_aware, got 'max'"):
        MHIM(score="max")
    with pytest.raises(ConfigError, match="setup"):
        MHIM().teacher_view(padded_batch([3]))


def test_class_aware_score_for_attention_pooling() -> None:
    for c in (1, 3):
        model, method = make(tiny(num_classes=c), score="class_aware")
        method.eval()  # the teacher's eval-mode forward is compared with a manual one
        batch = padded_batch([9, 5])
        scores, _ = method.teacher_view(batch)
        t = method.teacher
        h = t.embed(batch.x)
        a = t.pool.scorer(h)[..., 0].masked_fill(~batch.mask, float("-inf")).softmax(-1)
        manual = class_probability(t.head(a.unsqueeze(-1) * h) - t.head.bias)  # class-0 bias on all: no bias
        torch.testing.assert_close(scores[batch.mask], manual[batch.mask])
        assert ((scores[batch.mask] >= (0.5 if c == 1 else 1 / 3)) & (scores[batch.mask] <= 1)).all()


def test_class_aware_score_for_mambamil_uses_the_pooled_features() -> None:
    model, method = make(tiny("mambamil"), score="class_aware")
    method.eval()
    batch = padded_batch([9, 5])
    scores, _ = method.teacher_view(batch)
    t = method.teacher
    feats = t.aggregate(t.embed(batch.x), batch.mask)
    a = feats.instance_scores.masked_fill(~batch.mask, float("-inf")).softmax(-1)
    shares = a.unsqueeze(-1) * feats.extras["pooled_instances"]
    torch.testing.assert_close(shares.sum(1), feats.bag_embedding)  # the shares add up to the bag embedding
    torch.testing.assert_close(scores[batch.mask], class_probability(t.head(shares) - t.head.bias)[batch.mask])
    model.train()
    assert torch.isfinite(method.training_step(model, batch, CTX).loss)


def test_class_aware_score_for_transmil_follows_the_first_layer_values() -> None:
    """v2's TransMIL score: layer-1 cls attention × per-head values → to_out → head; padding changes nothing."""
    model, method = make(tiny("transmil"), score="class_aware")
    method.eval()
    batch = padded_batch([9, 5])
    scores, _ = method.teacher_view(batch)
    t = method.teacher
    h = t.embed(batch.x[:1, :9])
    feats = t.aggregate(h, batch.mask[:1, :9])
    a = feats.extras["attention"][0][0]  # (H, N) of the first bag alone
    attn = t.layer1.attn
    v = attn.to_qkv(t.layer1.norm(h[0]))[:, 2 * attn.heads * attn.dim_head:].view(9, attn.heads, attn.dim_head)
    manual = class_probability(t.head(attn.to_out((a.T.unsqueeze(-1) * v).flatten(1))) - t.head.bias)
    torch.testing.assert_close(scores[0, :9], manual, rtol=1e-4, atol=1e-5)
    model.train()
    assert torch.isfinite(method.training_step(model, batch, CTX).loss)


class HandBuilt(MILModel):
    """Identity embedding, fixed attention logits (the first feature), linear head with fixed weights."""

    def __init__(self, weight: list[list[float]], bias: list[float]) -> None:
        super().__init__(in_dim=2, num_classes=len(bias))
        self.head = nn.Linear(2, len(bias))
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(weight))
            self.head.bias.copy_(torch.tensor(bias))

    @property
    def embed_dim(self) -> int:
        return 2

    def aggregate(self, h, mask, coords=None) -> BagFeatures:
        a = h[..., 0].masked_fill(~mask, float("-inf")).softmax(-1)
        return BagFeatures(bag_embedding=(a.unsqueeze(-1) * h).sum(1), instance_scores=h[..., 0])


@pytest.mark.parametrize("bias_mode", ["class0", "own"])
def test_class_aware_score_formula_on_a_hand_built_model(bias_mode: str) -> None:
    """s_i = max_c softmax_c(W·(a_i h_i) + b), with b = (b_0, b_0) upstream (``class0``) or (b_0, b_1) (``own``).

    Instances h = (0, 2), (0, -2), (ln 2, 0): a = (1/4, 1/4, 1/2), a_i h_i = (0, .5), (0, -.5), (ln2/2, 0).
    W = [[0, 0], [0, 1]], b = (0, 3): upstream scores the signed evidence by its magnitude, σ(.5) for the
    first two instances and 1/2 for the third; with the own bias the gap of 3 dominates, σ(3.5), σ(2.5), σ(3).
    """
    model = HandBuilt([[0.0, 0.0], [0.0, 1.0]], [0.0, 3.0])
    method = MHIMv2(class_aware_bias=bias_mode, grn_heads=1, grn_dim_head=2)
    method.setup(model)
    method.eval()
    x = torch.tensor([[[0.0, 2.0], [0.0, -2.0], [math.log(2.0), 0.0]]])
    scores, _ = method.teacher_view(BagBatch(x=x, mask=torch.ones(1, 3, dtype=torch.bool)))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = [sig(0.5), sig(0.5), 0.5] if bias_mode == "class0" else [sig(3.5), sig(2.5), sig(3.0)]
    torch.testing.assert_close(scores[0], torch.tensor(expected))
    # one logit: the same scores as the two-class model with w = w_1 - w_0 (and b = b_1 - b_0 for ``own``)
    one = HandBuilt([[0.0, 1.0]], [3.0])
    method1 = MHIMv2(class_aware_bias=bias_mode, grn_heads=1, grn_dim_head=2)
    method1.setup(one)
    method1.eval()
    torch.testing.assert_close(method1.teacher_view(BagBatch(x=x, mask=torch.ones(1, 3, dtype=torch.bool)))[0][0],
                               torch.tensor(expected))


def test_class_aware_bias_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="method.class_aware_bias must be one of class0, own, got 'zero'"):
        MHIM(class_aware_bias="zero")


def test_class_aware_score_needs_a_decomposable_model() -> None:
    model, method = make(tiny("mean"), score="class_aware")
    with pytest.raises(ConfigError, match="method.score=class_aware: PoolingMIL is not attention pooling"):
        method.training_step(model, padded_batch([6]), CTX)
    model, method = make(tiny("mi_net", num_classes=3), score="class_aware")
    method.eval()
    batch = padded_batch([6])
    inst = method.teacher.aggregate(method.teacher.embed(batch.x), batch.mask).extras["instance_logits"]
    torch.testing.assert_close(method.teacher_view(batch)[0], inst.softmax(-1).amax(-1))


class MultiHead(MILModel):
    """Test model exposing per-head attention per layer, like TransMIL."""

    def __init__(self, in_dim: int = IN_DIM, num_classes: int = 2, heads: int = 3) -> None:
        super().__init__(in_dim, num_classes)
        self.embed = nn.Linear(in_dim, 8)
        self.embed.out_dim = 8
        self.q = nn.Linear(8, heads)
        self.head = nn.Linear(8, num_classes)

    def aggregate(self, h, mask, coords=None) -> BagFeatures:
        attn = self.q(h).transpose(1, 2).masked_fill(~mask[:, None], torch.finfo(h.dtype).min).softmax(-1)
        return BagFeatures(bag_embedding=(attn.mean(1, keepdim=True) @ h)[:, 0], instance_scores=attn.mean(1),
                           extras={"attention": [attn, attn.flip(1)]})


def test_multi_head_attention_is_used_with_voting() -> None:
    model, method = make(MultiHead(), attn_layer=1)
    method.eval()
    batch = padded_batch([10, 6])
    scores, _ = method.teacher_view(batch)
    assert scores.shape == (2, 3, 10)
    torch.testing.assert_close(scores, method.teacher.aggregate(method.teacher.embed(batch.x), batch.mask)
                               .extras["attention"][1])
    assert method.training_step(model, batch, CTX).loss.isfinite()


def test_training_is_deterministic_under_a_seed() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(11)
        model, method = make()
        return method.training_step(model, padded_batch([15, 9]), CTX).loss

    assert torch.equal(run(), run())


def test_mhim_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    model = tiny()
    method = MHIM(mask_ratio_high=0.05, mask_ratio_rand=0.3, momentum=0.99)
    fit(model, method, synthetic_bags(24, seed=1), epochs=5)
    assert auc(model, method, synthetic_bags(40, seed=2)) > 0.95
