"""Every config composes and instantiates (lightning-hydra-template pattern)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from milkit.cli import CONF_DIR
from milkit.models import MILModel, list_models
from milkit.training.methods import TrainingMethod
from unit_tests.training.conftest import compose_cfg

CONF = Path(CONF_DIR)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def _has_missing(node) -> bool:
    return bool(OmegaConf.missing_keys(node))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    if OmegaConf.is_missing(cfg.data, "in_dim"):  # cohort recipes leave the feature dimension to the user
        cfg = compose_cfg([f"experiment={experiment}", "data.in_dim=24"], tmp_path)
    model = instantiate(cfg.model)
    assert isinstance(model, MILModel) and model.in_dim == cfg.data.in_dim
    assert isinstance(instantiate(cfg.method), TrainingMethod)
    instantiate(cfg.optimizer)(model.parameters())
    instantiate(cfg.trainer, logger=False)
    if not _has_missing(cfg.data.source):
        source = instantiate(cfg.data.source)
        assert source.in_dim == cfg.data.in_dim


@pytest.mark.parametrize("model", MODELS)
def test_model_config_goes_through_the_registry(model: str, tmp_path: Path) -> None:
    cfg = compose_cfg([f"model={model}"], tmp_path)
    assert cfg.model._target_ == "milkit.models.create_model" and cfg.model.model_name in list_models()
    assert instantiate(cfg.model).num_classes == cfg.data.num_classes


@pytest.mark.parametrize("method", METHODS)
def test_method_configs_instantiate(method: str, tmp_path: Path) -> None:
    assert isinstance(instantiate(compose_cfg([f"method={method}"], tmp_path).method), TrainingMethod)


@pytest.mark.parametrize("group", ["trainer", "callbacks", "logger", "data"])
def test_every_option_of_simple_groups_composes(group: str, tmp_path: Path) -> None:
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        cfg = compose_cfg([f"{group}={option}"], tmp_path)
        assert group in cfg


@pytest.mark.parametrize("option, kinds", [("csv", ["CSVLogger"]), ("tensorboard", ["TensorBoardLogger"]),
                                           ("many", ["CSVLogger", "TensorBoardLogger"]), ("none", [])])
def test_logger_options_build_their_loggers(option: str, kinds: list[str], tmp_path: Path) -> None:
    cfg = compose_cfg([f"logger={option}"], tmp_path)
    loggers = [instantiate(lg, save_dir=str(tmp_path), name="fold0", version="")
               for lg in (cfg.get("logger") or {}).values() if lg is not None and "_target_" in lg]
    assert sorted(type(lg).__name__ for lg in loggers) == kinds


@pytest.mark.parametrize("option, expected", [
    ("cpu", {"accelerator": "cpu"}), ("gpu", {"accelerator": "gpu", "devices": 1}),
    ("ddp", {"accelerator": "gpu", "strategy": "ddp", "devices": -1, "num_nodes": 1}),
    ("ddp_cpu", {"accelerator": "cpu", "strategy": "ddp", "devices": 2})])
def test_trainer_options_say_what_they_run_on(option: str, expected: dict, tmp_path: Path) -> None:
    trainer = compose_cfg([f"trainer={option}"], tmp_path).trainer
    assert {k: trainer.get(k) for k in expected} == expected
    assert trainer.max_epochs >= trainer.min_epochs >= 1
