"""Models added for the algorithmic unit tests: notebook reference architectures and threshold MIL."""
from __future__ import annotations

import pytest
import torch

from milkit.models import create_model, model_info
from milkit.models.aut_reference import SumHead


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_aut_attention_matches_the_notebook_shape_and_sums_pooled_features() -> None:
    model = create_model("aut_attention", in_dim=16, num_classes=1).eval()
    # 3 x Linear(.,128) + W: Linear(256, 128) + v: Linear(128, 1); no head parameters (sum read-out)
    assert _nparams(model) == (16 * 128 + 128) + 2 * (128 * 128 + 128) + (256 * 128 + 128) + (128 + 1)
    assert isinstance(model.head, SumHead)
    x = torch.randn(2, 7, 16)
    out = model(x)
    torch.testing.assert_close(out.logits[:, 0], out.bag_embedding.sum(-1))
    assert isinstance(create_model("aut_attention", in_dim=16, num_classes=3).head, torch.nn.Linear)


def test_aut_attention_context_is_the_masked_mean() -> None:
    model = create_model("aut_attention", in_dim=4, num_classes=1, embed_dim=8, depth=1, dropout=0.0).eval()
    x = torch.randn(1, 5, 4)
    with torch.no_grad():
        h = model.embed(x)
        pre = model.w(torch.cat([h, h.mean(1, keepdim=True).expand_as(h)], -1))  # notebook: W [h_n; c]
        expected = model.v(torch.tanh(pre)).squeeze(-1)
        torch.testing.assert_close(model(x).instance_scores, expected)


def test_tran_mil_matches_the_notebook_shape_and_mixes_instances() -> None:
    model = create_model("tran_mil", in_dim=16, num_classes=1).eval()
    layer = 4 * (128 * 128 + 128) + 2 * (128 * 128 + 128) + 2 * 2 * 128  # attention, FFN (128 wide), 2 norms
    assert _nparams(model) == (16 * 128 + 128) + 3 * layer + (128 + 1)
    assert model.layers[0].self_attn.num_heads == 8 and not model.layers[0].norm_first
    x = torch.randn(1, 6, 16)
    x2 = x.clone()
    x2[0, 5] = -10.0  # changing one instance changes every token's score (self-attention)
    with torch.no_grad():
        a, b = model(x).instance_scores[0, :5], model(x2).instance_scores[0, :5]
    assert (a - b).abs().min() > 0


def test_threshold_mil_is_monotone_under_adding_instances() -> None:
    torch.manual_seed(0)
    model = create_model("threshold_mil", in_dim=8, num_classes=1, embed_dims=(16,)).eval()
    with torch.no_grad():
        model.head.bias.fill_(3.0)
        x = 3 * torch.randn(200, 10, 8)
        mask = torch.ones(200, 10, dtype=torch.bool)
        mask[:, 9] = False
        base = model(x, mask).logits
        added = model(x, torch.ones_like(mask)).logits
    assert (added >= base).all() and (added > base).any()


def test_threshold_mil_is_an_and_of_concepts() -> None:
    model = create_model("threshold_mil", in_dim=2, num_classes=1, n_concepts=2, embed_dims=(), tau=0.1).eval()
    with torch.no_grad():  # concept 0 fires on feature 0, concept 1 on feature 1
        model.concepts.weight.copy_(10 * torch.eye(2))
        model.concepts.bias.fill_(-5.0)
        model.head.bias.fill_(2.0)
        both = model(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])).logits
        many_a = model(torch.tensor([[[1.0, 0.0]] * 40])).logits  # 40 copies of one concept
        assert both.item() > 0 > many_a.item()
        # an absent concept caps the score: logit <= b + w_k log σ(p_k)
        p = model.forward_features(torch.tensor([[[1.0, 0.0]] * 40])).bag_embedding
        cap = model.head.bias + model.head.weight[0, 1] * torch.nn.functional.logsigmoid(p[0, 1])
        assert many_a.item() <= cap.item()


def test_registry_metadata() -> None:
    assert model_info("threshold_mil")["mil_assumption"] == "threshold"
    assert model_info("mi_net")["mil_assumption"] == "standard"
    assert model_info("aut_attention")["mil_assumption"] == "none" and model_info("tran_mil")["permutation_invariant"]
    with pytest.raises(ValueError, match="tau"):
        create_model("threshold_mil", in_dim=2, num_classes=1, tau=0.0)
