"""The command-line entry points: one-line errors with non-zero exit, -m sweeps, DDP on 2 CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from milkit.cli import run_safely
from milkit.errors import DataError
from milkit.training.train import train

ROOT = Path(__file__).resolve().parents[2]
FAST = ["data=synthetic", "data.source.n_bags=24", "data.source.max_size=16", "model.embed_dims=[16]",
        "model.attn_dim=8", "trainer.max_epochs=2", "trainer.min_epochs=1", "cv.folds=3", "cv.run_folds=[0]"]


def run(args: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args, f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)


def test_bad_input_is_one_line_and_nonzero(tmp_path: Path) -> None:
    res = run(["data=features", f"data.source.feature_dir={tmp_path}", "data.source.cohort_csv=missing.csv"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == "milkit: error: missing.csv: cohort CSV not found"


@pytest.mark.parametrize("override, message", [
    ("model.model_name=abmill", "unknown model 'abmill'"),
    ("data.in_dim=30", "model.in_dim=30 but the features of 'synthetic' have D=32"),
])
def test_errors_inside_instantiation_are_one_line(make_cfg, capsys, override: str, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_safely(train, make_cfg(override))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("milkit: error: ") and message in err and "\n" not in err


def test_multirun_sweep(tmp_path: Path) -> None:
    res = run(["-m", *FAST, "seed=0,1"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    results = sorted(tmp_path.glob("train/multiruns/*/*/results.json"))
    assert len(results) == 2 and all("test/auroc" in json.loads(p.read_text()) for p in results)


@pytest.mark.timeout(300)
def test_ddp_with_two_cpu_processes(tmp_path: Path) -> None:
    res = run([*FAST, "trainer=ddp_cpu", "data.source.n_bags=33",
               "data.source.bags_per_case=1"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("[milkit] data ") == 1  # progress lines from rank zero only
    (result,) = tmp_path.glob("train/runs/*/results.json")
    row = json.loads(result.read_text())["folds"][0]
    assert {"test/auroc", "test/acc", "test/bacc", "test/f1"} <= set(row)
    assert (result.parent / "fold0" / "checkpoints" / "best.ckpt").exists()
    # every test bag exactly once (both ranks' shares, the sampler's padding removed), and the logged accuracy
    # is that of these predictions
    splits = pd.read_csv(result.parent / "splits.csv", dtype={"bag_id": str})
    test_ids = sorted(splits.query("fold == 0 and split == 'test'")["bag_id"])
    preds = pd.read_csv(result.parent / "fold0" / "test_predictions.csv", dtype={"bag_id": str})
    assert len(test_ids) % 2 == 1 and sorted(preds["bag_id"]) == test_ids
    acc = (preds[["prob_0", "prob_1"]].to_numpy().argmax(1) == preds["label"].to_numpy()).mean()
    assert row["test/acc"] == pytest.approx(acc, abs=1e-6)


class _BadDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        raise DataError("/x/s3.h5: features contain NaN or inf in 1 of 3 rows")


def test_errors_raised_in_dataloader_workers_stay_one_line(capsys) -> None:
    loader = torch.utils.data.DataLoader(_BadDataset(), num_workers=1)
    with pytest.raises(SystemExit) as info:
        run_safely(lambda cfg: next(iter(loader)), OmegaConf.create())
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "milkit: error: /x/s3.h5: features contain NaN or inf in 1 of 3 rows"]


def test_a_missing_mandatory_value_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        run_safely(lambda cfg: cfg.data.source.feature_dir, OmegaConf.create({"data": {"source": {"feature_dir": "???"}}}))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'data.source.feature_dir' has no value" in err[0]
