"""TransMIL: square filling with the first instances, cls-attention extras, score layer, order dependence."""
from __future__ import annotations

import pytest
import torch

from milkit.errors import ConfigError
from milkit.models import create_model

TINY = {"dim": 16, "heads": 2, "n_landmarks": 4, "residual_kernel": 3, "attn_dropout": 0.0}


def test_forward_equals_plain_composition_of_the_paper_blocks() -> None:
    """One bag of 7 instances: fc → [cls, h, h[:2]] (3×3 grid) → layer1 → PPEG → layer2 → LN(cls) → head."""
    model = create_model("transmil", in_dim=10, num_classes=3, **TINY).eval()
    x = torch.randn(1, 7, 10)
    with torch.no_grad():
        h = model.embed(x)
        seq = torch.cat([model.cls_token, h, h[:, :2]], dim=1)
        full = torch.ones(1, 10, dtype=torch.bool)
        seq = model.layer1(seq, full)[0]
        seq = torch.cat([seq[:, :1], model.pos_layer(seq[:, 1:], [3])], dim=1)
        seq = model.layer2(seq, full)[0]
        expected = model.head(model.norm(seq[:, 0]))
        torch.testing.assert_close(model(x).logits, expected)


def test_attention_extras_and_score_layer() -> None:
    x = torch.randn(2, 6, 10)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    for layer in (0, 1):
        model = create_model("transmil", in_dim=10, num_classes=2, score_layer=layer, **TINY).eval()
        with torch.no_grad():
            out = model(x, mask)
        attention = out.extras["attention"]
        assert len(attention) == 2 and all(a.shape == (2, 2, 6) for a in attention)
        assert torch.isneginf(attention[0][1, :, 4:]).all() and torch.isfinite(attention[1][1, :, :4]).all()
        torch.testing.assert_close(out.instance_scores, attention[layer].mean(1))


def test_cls_attention_is_close_to_a_distribution_over_the_sequence() -> None:
    """With landmarks covering all tokens the Nyström cls row is the exact softmax row: non-negative and,
    over the instances plus the cls and fill tokens, summing to one; the instances get most of it here."""
    model = create_model("transmil", in_dim=10, num_classes=2, dim=16, heads=2, n_landmarks=32,
                         pinv_iterations=40, residual_kernel=3, attn_dropout=0.0).double().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 9, 10, dtype=torch.float64))  # 3×3 grid, no fill: 10 tokens with cls
    a = out.extras["attention"][0]
    assert (a > -1e-6).all() and (a.sum(-1) <= 1 + 1e-6).all() and (a.sum(-1) > 0.5).all()


def test_order_matters() -> None:
    model = create_model("transmil", in_dim=10, num_classes=2, **TINY).eval()
    x = torch.randn(1, 9, 10)
    with torch.no_grad():
        a, b = model(x).logits, model(x[:, torch.randperm(9)]).logits
    assert not torch.allclose(a, b, atol=1e-6)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"dim \(10\) must be divisible by heads \(4\)"):
        create_model("transmil", in_dim=8, num_classes=2, dim=10, heads=4)
    with pytest.raises(ConfigError, match="score_layer must be 0 or 1, got 2"):
        create_model("transmil", in_dim=8, num_classes=2, score_layer=2)


def test_bf16_autocast_stays_close_to_float32() -> None:
    model = create_model("transmil", in_dim=10, num_classes=2, dim=32, heads=4, attn_dropout=0.0).eval()
    x = torch.randn(1, 50, 10)
    with torch.no_grad():
        ref = model(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x).logits
    torch.testing.assert_close(out.float(), ref, atol=0.03, rtol=0.05)
