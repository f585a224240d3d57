"""``data=<cohort>_os`` with ``task=survival``: every survival cohort config composes, and a CI-size epoch runs on
synthetic features written under a subset of TCGA-BLCA's real slide names (several slides per patient, concatenated
into one patient bag); without ``task=survival`` the cohort fails in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from milkit.cli import CONF_DIR, run_safely
from milkit.training.train import train
from unit_tests.data.test_feature_files import write_h5

SURVIVAL_CONFIGS = sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("tcga_*_os*.yaml"))
TINY = ["model=abmil", "model.embed_dims=[8]", "model.attn_dim=4", "data.in_dim=6", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.min_epochs=1", "cv.folds=3", "cv.run_folds=[0]", "logger=none"]


def test_every_survival_cohort_has_a_config() -> None:
    assert len(SURVIVAL_CONFIGS) == 11


@pytest.mark.parametrize("cohort", SURVIVAL_CONFIGS)
def test_survival_cohort_configs_compose_with_the_survival_task(cohort: str, make_cfg) -> None:
    cfg = make_cfg(f"data={cohort}", "task=survival", fast=False)
    assert cfg.data.requires_task == "survival" and cfg.task._target_ == "milkit.tasks.SurvivalTask"
    assert cfg.data.source.cohort_csv == cohort and OmegaConf.is_missing(cfg.data.source, "feature_dir")


@pytest.fixture(scope="module")
def blca_features(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """48 patients of tcga_blca_os (every slide of each), risk-driven features; (dir, slides, patients)."""
    table = pd.read_csv(Path(CONF_DIR).parents[1] / "data" / "cohorts" / "tcga_blca_os.csv")
    multi = table["case_id"].duplicated(keep=False)
    cases = list(table.loc[multi, "case_id"].unique()[:8]) + list(table.loc[~multi, "case_id"].unique()[:40])
    rows = table[table["case_id"].isin(cases)]
    fdir = tmp_path_factory.mktemp("blca")
    rng = np.random.default_rng(0)
    for r in rows.itertuples(index=False):
        x = rng.standard_normal((12, 6)).astype(np.float32)
        x[:4, 0] += 2.0 * r.event - 0.02 * r.survival_months  # short, observed survival: a stronger signal
        write_h5(fdir / f"{r.slide_id}.h5", n=len(x), features=x)
    return fdir, len(rows), len(cases)


def test_one_survival_epoch_on_a_tcga_cohort_by_name(blca_features, make_cfg, capsys) -> None:
    fdir, n_slides, n_cases = blca_features
    summary = run_safely(train, make_cfg("data=tcga_blca_os", "task=survival", f"data.source.feature_dir={fdir}",
                                         *TINY, fast=False))
    out = capsys.readouterr().out
    assert f"of 437 table ids matched {n_slides} files" in out and f"{437 - n_slides} missing" in out
    assert 0.0 <= summary["test/cindex"]["mean"] <= 1.0 and summary["folds"][0]["epochs"] == 1
    splits = pd.read_csv(Path(summary["folds"][0]["checkpoint"]).parents[2] / "splits.csv")
    assert splits["bag_id"].nunique() == n_cases  # one bag per patient: its slides concatenated


def test_a_survival_cohort_without_the_survival_task_is_one_line(blca_features, make_cfg, capsys) -> None:
    cfg = make_cfg("data=tcga_blca_os", f"data.source.feature_dir={blca_features[0]}", *TINY, fast=False)
    with pytest.raises(SystemExit) as exc:
        run_safely(train, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "task=survival" in err[0]
