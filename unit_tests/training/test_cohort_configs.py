"""``data=<cohort>``: one CI-size training epoch per classification cohort, on synthetic features written under a
subset of the cohort's real slide ids in the file-name forms that occur (CAMELYON ``.tif.h5``, TCGA barcode + UUID,
CLAM ``pt_files``, several slides per TCGA patient)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from milkit.cli import run_safely
from milkit.training.train import train
from unit_tests.data.test_feature_files import write_h5

COHORTS = Path(__file__).resolve().parents[2] / "data" / "cohorts"
TINY = ["model=abmil", "model.embed_dims=[8]", "model.attn_dim=4", "data.in_dim=6", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.min_epochs=1", "cv.folds=3", "cv.run_folds=[0]", "logger=none"]
PER_CLASS = 6  # table rows per class given a file
RNG = np.random.default_rng(0)


def _features(label_index: int) -> np.ndarray:
    x = RNG.standard_normal((10, 6)).astype(np.float32)
    x[:3, 0] += 3.0 * label_index  # a few witness instances in the second class
    return x


def _write(fdir: Path, cohort: str, rows: pd.DataFrame, classes: list[str]) -> int:
    """Feature files for ``rows`` named as the cohort's sources name them; returns the number of files."""
    n = 0
    for i, r in enumerate(rows.itertuples(index=False)):
        feats = _features(classes.index(r.label))
        if cohort == "camelyon16":  # .tif kept in the name; every third file in CLAM's pt_files/
            if i % 3:
                write_h5(fdir / f"{r.slide_id}.tif.h5", n=len(feats), features=feats)
            else:
                (fdir / "pt_files").mkdir(exist_ok=True)
                torch.save(torch.from_numpy(feats), fdir / "pt_files" / f"{r.slide_id}.pt")
        elif cohort == "tcga_brca":  # the table lists patients; some have two diagnostic slides
            for dx in range(1 + i % 2):
                write_h5(fdir / f"{r.slide_id}-01Z-00-DX{dx + 1}.{i:08X}-AAAA.h5", n=len(feats), features=feats)
                n += 1
            continue
        else:  # tables hold <barcode>.<uuid>: the file name as GDC ships it
            write_h5(fdir / f"{r.slide_id}.h5", n=len(feats), features=feats)
        n += 1
    return n


@pytest.fixture(scope="module")
def cohort_features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, int, int]]:
    """cohort → (feature dir, table rows, rows with files, files); one extra unrelated file per folder."""
    out = {}
    for cohort, classes in (("camelyon16", ["normal", "tumor"]), ("tcga_nsclc", ["LUAD", "LUSC"]),
                            ("tcga_brca", ["IDC", "ILC"])):
        table = pd.read_csv(COHORTS / f"{cohort}.csv")
        groups = ["split", "label"] if "split" in table else ["label"]
        rows = table.groupby(groups).head(PER_CLASS if "split" not in table else PER_CLASS // 2 + 2)
        fdir = tmp_path_factory.mktemp(cohort)
        n_files = _write(fdir, cohort, rows, classes)
        write_h5(fdir / "not_in_the_table.h5", d=6)
        out[cohort] = (fdir, len(table), len(rows), n_files)
    return out


@pytest.mark.parametrize("cohort", ["camelyon16", "tcga_nsclc", "tcga_brca"])
def test_one_epoch_on_the_cohort_by_name(cohort: str, cohort_features, make_cfg, capsys) -> None:
    fdir, n_table, n_rows, n_files = cohort_features[cohort]
    summary = run_safely(train, make_cfg(f"data={cohort}", f"data.source.feature_dir={fdir}", *TINY, fast=False))
    out = capsys.readouterr().out
    assert (f"table ids matched {n_files} files" in out and f"{n_rows} of {n_table}" in out
            and f"{n_table - n_rows} missing" in out and "1 extra files" in out)
    assert f"{n_files} bags" in out
    assert 0.0 <= summary["test/auroc"]["mean"] <= 1.0 and summary["folds"][0]["epochs"] == 1
    if cohort == "camelyon16":  # the official test slides are the test fold; validation comes from training slides
        splits = pd.read_csv(Path(summary["folds"][0]["checkpoint"]).parents[2] / "splits.csv")
        assert set(splits.loc[splits["split"] == "test", "bag_id"].str[:4]) == {"test"}
        assert set(splits.loc[splits["split"] == "val", "bag_id"].str[:4]) <= {"norm", "tumo"}


def test_strict_mode_fails_with_the_missing_ids(cohort_features, make_cfg, capsys) -> None:
    fdir = cohort_features["tcga_nsclc"][0]
    cfg = make_cfg("data=tcga_nsclc", f"data.source.feature_dir={fdir}", "data.source.strict=true", *TINY, fast=False)
    with pytest.raises(SystemExit) as exc:
        run_safely(train, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("milkit: error: ") and "tcga_nsclc.csv: 1041 slide(s) have no feature file in" in err[0]
    assert err[0].endswith("... (data.source.strict=true)")


def test_unset_in_dim_is_one_line_naming_the_key(cohort_features, make_cfg, capsys) -> None:
    fdir = cohort_features["camelyon16"][0]
    cfg = make_cfg("data=camelyon16", f"data.source.feature_dir={fdir}", *[o for o in TINY if "in_dim" not in o],
                   fast=False)
    with pytest.raises(SystemExit):
        run_safely(train, cfg)
    assert capsys.readouterr().err.strip() == ("milkit: error: data.in_dim is not set; the features of "
                                               f"'{fdir.name}' have D=6 (set data.in_dim=6)")


@pytest.mark.parametrize("experiment, cohort, in_dim", [
    ("rrt_abmil_c16_r50", "camelyon16", 1024), ("rrt_abmil_c16_plip", "camelyon16", 512),
    ("rrt_abmil_nsclc_r50", "tcga_nsclc", 1024), ("rrt_abmil_nsclc_plip", "tcga_nsclc", 512),
    ("rrt_abmil_brca_r50", "tcga_brca", 1024), ("rrt_abmil_brca_plip", "tcga_brca", 512),
    ("mhim_abmil_baseline", "camelyon16", None), ("mhim_transmil", "camelyon16", None),
    ("mhim_dsmil", "camelyon16", None), ("mambamil_nsclc", "tcga_nsclc", None)])
def test_recipes_run_on_their_cohort_by_name(experiment: str, cohort: str, in_dim: int | None, make_cfg) -> None:
    from omegaconf import OmegaConf

    cfg = make_cfg(f"experiment={experiment}", fast=False)
    assert cfg.data.source.cohort_csv == cohort and OmegaConf.is_missing(cfg.data.source, "feature_dir")
    assert (None if OmegaConf.is_missing(cfg.data, "in_dim") else cfg.data.in_dim) == in_dim
    if cohort == "camelyon16":  # R²T-MIL and MHIM-MIL cross-validate the 398 slides without test_114
        assert list(cfg.data.source.exclude) == ["test_114"] and cfg.cv.use_cohort_split is False
