"""CLAM: instance clustering loss on constructed cases, small bags, batching, MB heatmap branch."""
from __future__ import annotations

import math

import pytest
import torch

from milkit.errors import ConfigError
from milkit.models import create_model


def _sb(subtyping: bool, k_sample: int = 2):
    model = create_model("clam_sb", in_dim=4, num_classes=2, embed_dim=2, attn_dim=3, k_sample=k_sample,
                         subtyping=subtyping)
    with torch.no_grad():  # classifier k: logits (0, h_k)
        for k, clf in enumerate(model.instance_classifiers):
            clf.weight.zero_()
            clf.weight[1, k] = 1.0
            clf.bias.zero_()
    return model


def _nll(logit: float, target: int) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -math.log(p if target == 1 else 1 - p)


H = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.2, 0.7], [1.0, -0.4], [0.1, 1.5], [-1.2, 0.9]])
ATTN = torch.tensor([[[0.3, 0.9, -0.5, 0.1, 2.0, -1.0]]])  # order: 4, 1, 0, 3, 2, 5


def test_instance_loss_in_class_only() -> None:
    model = _sb(subtyping=False)
    loss = model.instance_loss(ATTN, H[None], torch.tensor([1]))
    # classifier 1; top-2 {4, 1} → 1; bottom-2 {5, 2} → 0
    expected = (_nll(1.5, 1) + _nll(0.3, 1) + _nll(0.9, 0) + _nll(0.7, 0)) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_instance_loss_with_subtyping_and_weight() -> None:
    model = _sb(subtyping=True)
    in_class = (_nll(1.5, 1) + _nll(0.3, 1) + _nll(0.9, 0) + _nll(0.7, 0)) / 4
    out_class = (_nll(0.1, 0) + _nll(2.0, 0)) / 2  # classifier 0 on the top-2 {4, 1}, target 0
    loss = model.instance_loss(ATTN, H[None], torch.tensor([1]))
    assert math.isclose(loss.item(), (in_class + out_class) / 2, rel_tol=1e-5)
    out = model(torch.randn(1, 6, 4))
    weighted = model.target_losses(out, torch.tensor([0]))["instance_loss"]
    plain = model.instance_loss(out.extras["attention"], out.extras["instance_embeddings"], torch.tensor([0]))
    assert math.isclose(weighted.item(), plain.item() * 0.3 / 0.7, rel_tol=1e-5)


def test_small_bags_and_batching() -> None:
    model = _sb(subtyping=True, k_sample=8)
    # 3 instances: in-class uses 1 per side (top {4}, bottom {5}), out-of-class all 3
    idx = [4, 1, 5]
    loss = model.instance_loss(ATTN[..., idx], H[idx][None], torch.tensor([0]))
    in_class = (_nll(0.1, 1) + _nll(-1.2, 0)) / 2
    out_class = (_nll(1.5, 0) + _nll(0.3, 0) + _nll(0.9, 0)) / 3
    assert math.isclose(loss.item(), (in_class + out_class) / 2, rel_tol=1e-5)
    # the same bag padded inside a batch: the batch loss is the mean of the bags' losses
    attn = torch.full((2, 1, 6), float("-inf"))
    attn[0, :, :3], attn[1] = ATTN[..., idx], ATTN
    h = torch.stack([torch.cat([H[idx], 50 * torch.ones(3, 2)]), H])
    other = model.instance_loss(ATTN, H[None], torch.tensor([1]))
    batch = model.instance_loss(attn, h, torch.tensor([0, 1]))
    assert math.isclose(batch.item(), (loss.item() + other.item()) / 2, rel_tol=1e-5)
    # a one-instance bag has no in-class term
    single = _sb(subtyping=False).instance_loss(ATTN[..., :1], H[:1][None], torch.tensor([0]))
    assert single.item() == 0.0


def test_mb_scores_follow_the_predicted_class() -> None:
    model = create_model("clam_mb", in_dim=4, num_classes=3, embed_dim=8, attn_dim=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 7, 4))
    pred = out.logits.argmax(-1)
    assert out.extras["attention"].shape == (2, 3, 7)
    torch.testing.assert_close(out.instance_scores, out.extras["attention"][torch.arange(2), pred])


def test_bag_weight_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"bag_weight must be in \(0, 1\], got 0.0"):
        create_model("clam_sb", in_dim=4, num_classes=2, bag_weight=0.0)
