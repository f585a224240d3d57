"""Every registered model has a ``conf/model/<name>.yaml`` that builds it through the registry."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from milkit.cli import CONF_DIR
from milkit.models import list_models

CONF = Path(CONF_DIR) / "model"


def test_every_registered_model_has_a_config() -> None:
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_config_instantiates_and_runs(name: str) -> None:
    cfg = OmegaConf.create({"data": {"in_dim": 32, "num_classes": 3}, "model": OmegaConf.load(CONF / f"{name}.yaml")})
    assert cfg.model.model_name == name
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 20, 32))
    assert out.logits.shape == (1, 3)
