"""Protocol pieces: standardisation, scores, batching, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from milkit.aut import make_test
from milkit.aut.trainer import Protocol, grid_coords, make_batch, positive_score, standardize, train_and_evaluate
from milkit.errors import ConfigError
from milkit.models import create_model


def test_standardize_uses_pooled_training_instances() -> None:
    ds = make_test("single_concept", seed=0, n_train=400, n_test=200)
    train, test = standardize(ds.train, ds.test)
    real = train.x[train.mask]
    torch.testing.assert_close(real.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(real.std(0, unbiased=False), torch.ones(16), atol=1e-5, rtol=0)
    assert (train.x[~train.mask] == 0).all() and (test.x[~test.mask] == 0).all()
    raw = ds.train.x[ds.train.mask]
    expected = (ds.test.x[0, 0] - raw.mean(0)) / raw.std(0)  # the test set uses the training statistics
    np.testing.assert_allclose(test.x[0, 0].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_positive_score() -> None:
    logits = torch.tensor([[0.3, 1.5], [2.0, -1.0]])
    torch.testing.assert_close(positive_score(logits), torch.tensor([1.2, -3.0]))
    torch.testing.assert_close(positive_score(logits[:, :1]), torch.tensor([0.3, 2.0]))


def test_make_batch_trims_padding_and_adds_grid_coords() -> None:
    x, mask = torch.randn(2, 6, 3), torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :2], mask[1, :4] = True, True
    batch = make_batch(x, mask, needs_coords=True)
    assert batch.x.shape == (2, 4, 3) and batch.coords.shape == (2, 4, 2)
    torch.testing.assert_close(grid_coords(5), torch.tensor([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1]]).float())
    assert make_batch(x, mask).coords is None


@pytest.mark.parametrize("bad", [{"loss": "mse"}, {"train_subset": "half"}, {"train_metrics": "x"}, {"epochs": 0}])
def test_protocol_validation(bad: dict) -> None:
    with pytest.raises(ConfigError):
        Protocol(**bad)


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_train_and_evaluate_runs_with_either_loss(loss: str) -> None:
    ds = make_test("single_concept", seed=0, n_train=200, n_test=100)
    train, test = standardize(ds.train, ds.test)
    protocol = Protocol(epochs=2, batch_size=50, loss=loss, train_subset="official", train_metrics="eval")
    model = create_model("mi_net", in_dim=16, num_classes=protocol.num_classes, embed_dims=(8,))
    out = train_and_evaluate(model, train, test, protocol)
    assert 0.0 <= out["train_auc"] <= 1.0 and 0.0 <= out["test_auc"] <= 1.0
    assert set(out["top_roles"]) == {"positive_bags", "negative_bags"}
    assert abs(sum(out["top_roles"]["positive_bags"].values()) - 1.0) < 1e-3
