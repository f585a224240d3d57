"""The monotonicity check: zero by construction for instance-max and threshold MIL, positive for mean pooling."""
from __future__ import annotations

import pytest
import torch

from milkit.aut import make_test
from milkit.aut.property_check import monotonicity_check
from milkit.aut.trainer import standardize
from milkit.models import create_model


@pytest.fixture(scope="module")
def data():
    ds = make_test("threshold_poison", seed=0, n_train=60, n_test=40, min_size=None)
    return standardize(ds.train, ds.test)


@pytest.mark.parametrize("name,kw", [("mi_net", {"embed_dims": (16,)}), ("threshold_mil", {"embed_dims": (16,)})])
def test_zero_for_models_that_respect_mil_by_construction(data, name: str, kw: dict) -> None:
    train, test = data
    torch.manual_seed(0)
    model = create_model(name, in_dim=16, num_classes=1, **kw)
    out = monotonicity_check(model, test, train, n_pairs=300, seed=0, atol=0.0, rtol=0.0)
    assert out["lowered_fraction"] == 0.0 and out["max_drop"] == 0.0
    assert set(out["lowered_by_role"]) == {"background", "concept_a", "concept_b", "poison"}


@pytest.mark.parametrize("name", ["mean", "abmil", "aut_attention"])
def test_positive_for_pooling_models(data, name: str) -> None:
    train, test = data
    torch.manual_seed(0)
    model = create_model(name, in_dim=16, num_classes=1)
    out = monotonicity_check(model, test, train, n_pairs=300, seed=0)
    assert 0.05 < out["lowered_fraction"] < 0.95 and out["max_drop"] > 0


def test_two_class_score_is_checked(data) -> None:
    # with two logits mi-Net's log-odds max(s1) - max(s0) is not monotone
    train, test = data
    torch.manual_seed(0)
    model = create_model("mi_net", in_dim=16, num_classes=2, embed_dims=(16,))
    assert monotonicity_check(model, test, train, n_pairs=300, seed=0)["lowered_fraction"] > 0
