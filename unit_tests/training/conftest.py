"""Hydra composition helpers for training tests (lightning-hydra-template pattern)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from milkit.cli import CONF_DIR

FAST = ["data=synthetic", "data.source.n_bags=24", "data.source.max_size=16", "model.embed_dims=[16]",
        "model.attn_dim=8", "trainer.max_epochs=3", "trainer.min_epochs=1", "cv.folds=3", "cv.run_folds=[0]"]


def compose_cfg(overrides: list[str], out_dir: Path, config_name: str = "train") -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir / "logs")
        cfg.paths.root_dir = str(out_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, fast=True)`` composes conf/train.yaml into a tmp output dir."""

    def _make(*overrides: str, fast: bool = True, name: str = "run", config_name: str = "train") -> DictConfig:
        return compose_cfg((FAST if fast else []) + list(overrides), tmp_path / name, config_name)

    return _make
