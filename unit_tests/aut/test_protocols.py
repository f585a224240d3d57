"""Both protocols (conf/protocol/fast.yaml, notebook.yaml): notebook sizes and batches, mi-Net passes Test 1."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from milkit.aut.runner import run_suite
from milkit.aut.trainer import notebook_batches, shuffle_within_bags
from milkit.cli import CONF_DIR
from milkit.models import create_model


def preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "protocol" / f"{name}.yaml"))


# The notebook's classes at d = 16, D = 128 (ReproducibilityMIL.ipynb): miNet / MiNet = 3 × Linear(·, 128) and
# Linear(128, 1); MIL_Pool = the same 3 blocks, additive attention (w: Linear(256, 128), v: Linear(128, 1)) and an
# unused pred Linear(128, 1); TranMil = Linear(16, 128), 3 encoder layers (in_proj 3·128², out_proj, two 128×128
# feed-forward linears, two LayerNorms), Linear(128, 1); MilGCN = GCNConv(16, 128), 2 × GCNConv(128, 128), Linear(128, 1).
MLP3 = (16 * 128 + 128) + 2 * (128 * 128 + 128)
LAYER = (3 * 128 * 128 + 3 * 128) + 3 * (128 * 128 + 128) + 2 * 2 * 128
NOTEBOOK_PARAMS = {"mi_net": MLP3 + 129, "mi_net_embedding": MLP3 + 129,
                   "aut_attention": MLP3 + (256 * 128 + 128) + 129 + 129,
                   "tran_mil": (16 * 128 + 128) + 3 * LAYER + 129, "milgcn": MLP3 + 129}
UNUSED = {"aut_attention": 129}  # MIL_Pool's pred Linear is never called; milkit's sum read-out has no parameters


@pytest.mark.parametrize("name", sorted(NOTEBOOK_PARAMS))
def test_notebook_protocol_models_match_the_notebooks_parameter_counts(name: str) -> None:
    model = create_model(name, in_dim=16, num_classes=1, **preset("notebook")["model_kwargs"][name])
    assert sum(p.numel() for p in model.parameters()) == NOTEBOOK_PARAMS[name] - UNUSED.get(name, 0)
    acts = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    if name in {"mi_net", "mi_net_embedding", "aut_attention"}:  # the notebook's MLP block
        assert len(acts) == 3 and all(a.negative_slope == 0.2 for a in acts) and drops == [0.5] * 3


def test_notebook_batches_follow_the_variable_batch_sampler() -> None:
    sizes = [3, 5, 5, 2, 5, 3, 1]
    mask = torch.arange(5).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    batches = [b.tolist() for b in notebook_batches(mask, 3)]
    assert batches == [[1, 2, 4], [0, 5, 3], [6]]  # largest first, ties by index, then cut
    # equal sizes on a class-ordered list: every batch but the one across the class boundary holds one class
    y = np.repeat([0, 1], 80)
    single = [len(set(y[b.numpy()])) == 1 for b in notebook_batches(torch.ones(160, 45, dtype=torch.bool), 32)]
    assert sum(single) == 4 and len(single) == 5


def test_shuffle_within_bags_permutes_real_instances_only() -> None:
    x = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out = shuffle_within_bags(x, mask, torch.Generator().manual_seed(0))
    assert sorted(out[0, :, 0].tolist()) == x[0, :, 0].tolist() and not torch.equal(out[0], x[0])
    assert sorted(out[1, :3, 0].tolist()) == [6.0, 7.0, 8.0] and out[1, 3:, 0].tolist() == [9.0, 10.0, 11.0]


@pytest.mark.parametrize("protocol,n_train,epochs", [("fast", 1000, 3), ("notebook", 2000, 3)])
def test_mi_net_passes_single_concept_under_both_protocols(protocol: str, n_train: int, epochs: int) -> None:
    cfg = {**preset(protocol), "models": ["mi_net"], "tests": ["single_concept"], "seeds": [0, 1], "epochs": epochs,
           "n_train": n_train, "n_test": 300, "property_pairs": 100, "verbose": False}
    result = run_suite(cfg)
    row = result["summary"][0]
    assert row["verdict"] == "PASS" and row["worst_auc"] is not None and row["worst_auc"] >= 0.5
    assert all(len(r["test_auc_curve"]) == epochs and r["test_auc_curve"][-1] > 0.7 for r in result["runs"])
    assert result["meta"]["protocol_name"] == protocol
    assert result["meta"]["protocol"]["batching"] == ("notebook" if protocol == "notebook" else "random")
