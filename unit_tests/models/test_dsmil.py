"""DSMIL: critical instances per class, attention to them, Conv1d head, max-instance loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from milkit.models import create_model


def _model(num_classes: int = 2):
    model = create_model("dsmil", in_dim=4, num_classes=num_classes, q_dim=3).eval()
    with torch.no_grad():  # instance logits = the first C features
        model.instance_classifier.weight.copy_(torch.eye(num_classes, 4))
        model.instance_classifier.bias.zero_()
    return model


def test_critical_instances_attention_and_bag_logits() -> None:
    model = _model(2)
    x = torch.randn(1, 6, 4)
    x[0, 3, 0], x[0, 1, 1] = 5.0, 6.0  # instance 3 is critical for class 0, instance 1 for class 1
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.extras["max_instance_logits"], torch.tensor([[5.0, 6.0]]))
        q = model.q(x[0])  # (N, Q)
        attn = torch.softmax(q @ q[[3, 1]].T / 3 ** 0.5, dim=0)  # (N, C)
        torch.testing.assert_close(out.extras["attention"][0], attn.T)
        bag = attn.T @ model.v(x[0])  # (C, E)
        torch.testing.assert_close(out.logits[0], model.head(bag[None])[0, :, 0])
        torch.testing.assert_close(out.instance_scores[0], x[0, :, :2].amax(-1))


def test_padding_is_never_critical() -> None:
    model = _model(2)
    x = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    x[1, 3:, :2] = 100.0  # padded instances with the largest instance logits
    with torch.no_grad():
        out = model(x, mask)
    torch.testing.assert_close(out.extras["max_instance_logits"][1], x[1, :3, :2].amax(0))
    assert torch.isneginf(out.extras["attention"][1, :, 3:]).all()


def test_max_instance_loss() -> None:
    for c, y in ((3, torch.tensor([2, 0])), (1, torch.tensor([1, 0]))):
        model = create_model("dsmil", in_dim=4, num_classes=c, max_instance_weight=0.5)
        out = model(torch.randn(2, 5, 4))
        m = out.extras["max_instance_logits"]
        expected = F.cross_entropy(m, y) if c > 1 else F.binary_cross_entropy_with_logits(m[:, 0], y.float())
        torch.testing.assert_close(model.target_losses(out, y)["max_instance_loss"], 0.5 * expected)
