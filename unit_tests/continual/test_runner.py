"""The continual runner on a tiny 2-task sequence, and every method config."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from milkit.cli import CONF_DIR
from milkit.continual import run_continual
from milkit.continual.methods import ContinualMethod
from milkit.errors import ConfigError

CONF = CONF_DIR
TINY = ["continual.in_dim=8", "continual.synthetic.n_train=8", "continual.synthetic.n_val=6",
        "continual.synthetic.n_test=6", "continual.synthetic.bag_size=[3,6]", "model.dim=8", "model.depth=1",
        "model.num_heads=2", "model.region_size=2", "model.attn_dim=4", "trainer.max_epochs=1",
        "data.batch_size=4"]


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("continual", overrides=["experiment=comel_synthetic", f"paths.output_dir={tmp_path}",
                                              *TINY, *overrides])
    cfg.continual.tasks = cfg.continual.tasks[:2]  # a 2-task sequence
    return cfg


@pytest.mark.parametrize("method", ["comel", "finetune"])
def test_runner_produces_a_well_formed_matrix(tmp_path: Path, method: str) -> None:
    extra = ["method.rank=2", "method.rank_overrides={}"] if method == "comel" else []
    res = run_continual(_cfg(tmp_path, f"method={method}", *extra))
    assert res["tasks"] == ["organ_a", "organ_b"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["matrices"] == res["matrices"]
    for name, m in res["matrices"].items():
        assert len(m) == 2 and all(len(row) == 2 for row in m)
        assert m[0][1] is None, f"{name}: task 2 cannot be evaluated before it is learned"
        for v in (m[0][0], m[1][0], m[1][1]):
            assert v is None or 0.0 <= v <= 1.0
    for name in ("acc", "acc_task", "auc", "inst_auc"):
        assert all(res["matrices"][name][i][j] is not None for i, j in ((0, 0), (1, 0), (1, 1)))
    acc = np.array(res["matrices"]["acc"], dtype=float)
    assert res["summary"]["acc"]["bwt"] == pytest.approx(acc[1, 0] - acc[0, 0])
    assert res["summary"]["acc"]["final"] == pytest.approx(acc[1].mean())
    assert len(res["thresholds"]) == 2 and all(0.0 <= t <= 1.0 for t in res["thresholds"])
    csv = np.loadtxt(tmp_path / "matrix_acc.csv", delimiter=",", skiprows=1)
    assert csv.shape == (2, 2) and math.isnan(csv[0, 1])


@pytest.mark.parametrize("name", ["comel", "finetune", "lwf", "ewc", "lora"])
def test_method_configs_build_continual_methods(tmp_path: Path, name: str) -> None:
    method = instantiate(_cfg(tmp_path, f"method={name}").method, _convert_="all")
    assert isinstance(method, ContinualMethod)
    assert (method.bppl is not None) == (name == "comel")


def test_empty_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"continual.tasks\[0\] \(organ_a\): the val split is empty"):
        run_continual(_cfg(tmp_path, "method=finetune", "continual.synthetic.n_val=0"))


def test_source_task_uses_patient_level_splits_and_loads_lazily() -> None:
    from milkit.continual.tasks import LazyBags, build_tasks, source_task
    from milkit.data.synthetic import SyntheticSource

    source = SyntheticSource(n_bags=30, in_dim=4, min_size=2, max_size=4, bags_per_case=2, seed=0)
    splits = source_task(source, fold=1, folds=3, seed=0)
    assert all(isinstance(getattr(splits, s), LazyBags) for s in ("train", "val", "test"))
    case = dict(zip(source.records["bag_id"], source.records["case_id"]))
    groups = [{case[i] for i in getattr(splits, s).ids} for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(getattr(splits, s)) for s in ("train", "val", "test")) == 30
    data = {"_target_": "milkit.continual.tasks.source_task", "folds": 3,
            "source": {"_target_": "milkit.data.synthetic.SyntheticSource", "n_bags": 30, "in_dim": 4}}
    cfg = [{"name": "a", "classes": ["neg", "pos"], "data": data}] * 2
    tasks = build_tasks(cfg)
    assert [t.offset for t in tasks] == [0, 2]
    assert {tasks[1].splits.test[i].label for i in range(len(tasks[1].splits.test))} <= {2, 3}


def test_a_supervised_method_is_refused_by_the_continual_runner(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method: Supervised is not a continual method"):
        run_continual(_cfg(tmp_path, "method=supervised"))
