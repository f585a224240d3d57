"""Scale-out of training: a sweep through submitit's local executor collected into one table, the table
itself, and two torchrun "nodes" (gloo, CPU) matching the single-process run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from milkit.tasks.survival_metrics import harrell_cindex
from milkit.training.collect import collect_results, main as collect_main, summarise_table
from milkit.training.train import train
from milkit.utils.dist import is_global_zero

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data=synthetic", "data.source.max_size=16", "model.embed_dims=[16]", "model.attn_dim=8", "cv.folds=3",
        "cv.run_folds=[0]", "trainer.min_epochs=1"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_ARRAY_TASK_ID", "NODE_RANK"):
        env.pop(key, None)
    return env


@pytest.mark.timeout(400)
def test_submitit_local_training_sweep_is_collected(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "hydra/launcher=submitit_local",
                          "hydra.launcher.timeout_min=5", *TINY, "data.source.n_bags=24", "trainer.max_epochs=2",
                          "seed=0,1", f"paths.log_dir={tmp_path}"],
                         capture_output=True, text=True, env=_env(), timeout=380, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")
    assert len(list((sweep / ".submitit").iterdir())) >= 2  # two submitit jobs ran
    table = pd.read_csv(sweep / "results_table.csv")
    assert sorted(table["seed"]) == [0, 1] and set(table["status"]) == {"ok"} and set(table["fold"]) == {"fold0"}
    for _, row in table.iterrows():  # every job's results.json, unchanged
        fold = json.loads((sweep / str(row["job"]) / "results.json").read_text())["folds"][0]
        assert row["test/auroc"] == pytest.approx(fold["test/auroc"]) and row["epochs"] == fold["epochs"]
    assert "results_table.csv" in res.stdout


def _fake_job(sweep: Path, num: int, model: str, seed: int, aurocs: list[float] | None) -> None:
    hydra = sweep / str(num) / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(f"- model={model}\n- seed={seed}\n- +trainer.max_epochs=3\n")
    (hydra / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  model_name: {model}\n")
    if aurocs is not None:
        folds = [{"fold": f"fold{k}", "epochs": 3, "test/auroc": a, "best_val/loss": 0.5} for k, a in enumerate(aurocs)]
        (sweep / str(num) / "results.json").write_text(json.dumps({"folds": folds}))


def test_collect_table_models_folds_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for num, (model, seed, aurocs) in enumerate([("abmil", 0, [0.6, 0.8]), ("abmil", 1, [0.7, 0.9]),
                                                 ("transmil", 0, [0.5, 0.5]), ("transmil", 1, None)]):
        _fake_job(tmp_path, num, model, seed, aurocs)
    table = collect_results(tmp_path)
    assert len(table) == 7 and (tmp_path / "results_table.csv").is_file()
    missing = table[table["status"] == "missing"]
    assert missing[["model", "seed"]].values.tolist() == [["transmil", 1]]
    assert table["trainer.max_epochs"].astype(str).unique().tolist() == ["3"]  # '+' stripped from the key
    summary = summarise_table(table)
    assert list(summary.index) == ["abmil", "transmil"]  # grouped by model; seed and constant keys folded
    assert summary.loc["abmil", ("test/auroc", "mean")] == pytest.approx(0.75)
    assert summary.loc["abmil", ("runs", "n")] == 4 and summary.loc["transmil", ("runs", "n")] == 2
    assert collect_main([str(tmp_path)]) == 0 and "abmil" in capsys.readouterr().out


def test_collect_on_a_folder_without_jobs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        collect_main([str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"milkit: error: {tmp_path}: no Hydra job folders (*/.hydra/overrides.yaml)"]


@pytest.mark.parametrize("env, zero", [({}, True), ({"RANK": "1"}, False), ({"RANK": "0", "LOCAL_RANK": "0"}, True),
                                       ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, False),
                                       ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True),
                                       ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False), ({"LOCAL_RANK": "1"}, False)])
def test_global_rank_zero_from_the_launch_environment(env: dict[str, str], zero: bool) -> None:
    assert is_global_zero(env) is zero


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _torchrun_two_nodes(overrides: list[str], out: Path, tmp_path: Path) -> list[str]:
    """scripts/train.py as two torchrun "nodes" of one CPU process each (gloo); each node gets its own run folder
    (whatever appears in rank1/ was written by the second process). Returns both logs."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                               f"--node-rank={r}", "--master-addr=127.0.0.1", f"--master-port={port}",
                               str(ROOT / "scripts" / "train.py"), *overrides, "trainer=ddp_cpu", "trainer.devices=1",
                               "trainer.num_nodes=2", f"paths.log_dir={tmp_path}",
                               f"hydra.run.dir={out}/rank${{oc.env:RANK}}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path)
             for r in (0, 1)]
    logs = [p.communicate(timeout=380)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    return logs


# 36 bags, one per case, 3 folds: 12 train, 12 val, 12 test bags in fold 0. Dropout is off (each DDP process draws
# its own dropout masks) and training is full-batch: one process with batch 12 against two processes with batch 6
# each (DDP averages the two half-batch gradients: the same gradient; the distributed sampler's order within an
# epoch then does not matter). Validation and test sets split evenly, so no padded repeats enter val/loss.
MATCHED = [*TINY, "data.source.n_bags=36", "data.source.bags_per_case=1", "trainer.max_epochs=15",
           "data.eval_batch_size=4", "callbacks.early_stopping.patience=100", "optimizer.lr=0.01", "model.dropout=0.0"]


@pytest.mark.timeout(400)
def test_torchrun_two_nodes_match_the_single_process_run(make_cfg, tmp_path: Path) -> None:
    single = train(make_cfg(*MATCHED, "data.batch_size=12", fast=False, name="single"))
    out = tmp_path / "ddp"
    logs = _torchrun_two_nodes([*MATCHED, "data.batch_size=6"], out, tmp_path)
    ddp = json.loads((out / "rank0" / "results.json").read_text())["folds"][0]
    ref = single["folds"][0]
    for key in ("test/auroc", "test/acc", "test/bacc", "test/f1", "best_val/loss"):
        assert ddp[key] == pytest.approx(ref[key], abs=1e-5), key
    assert ddp["epochs"] == ref["epochs"] == 15
    a = pd.read_csv(tmp_path / "single" / "fold0" / "test_predictions.csv").sort_values("bag_id")
    b = pd.read_csv(out / "rank0" / "fold0" / "test_predictions.csv").sort_values("bag_id")
    assert a["bag_id"].tolist() == b["bag_id"].tolist() and len(a) == 12
    np.testing.assert_allclose(b[["prob_0", "prob_1"]].to_numpy(), a[["prob_0", "prob_1"]].to_numpy(), atol=1e-5)
    # every output file written once: rank 0 has the single run's files (plus Hydra's), rank 1 only its log
    assert [f for f in _files(out / "rank0") if not f.startswith(".hydra")] == \
        ["fold0/checkpoints/best.ckpt", "fold0/metrics.csv", "fold0/test_predictions.csv", "results.json",
         "splits.csv", "train.log"]
    assert _files(out / "rank1") == ["train.log"]
    assert "[milkit] fold0" in logs[0] and "[milkit] fold0" not in logs[1]


@pytest.mark.parametrize("config_name, launcher, gpus", [("preprocess", "slurm_preprocess", 1),
                                                         ("train", "slurm_train", 1), ("aut", "slurm_aut", None)])
def test_slurm_launcher_configs_compose(config_name: str, launcher: str, gpus: int | None) -> None:
    from hydra import compose, initialize_config_dir

    from milkit.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name, overrides=[f"hydra/launcher={launcher}", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    la = cfg.hydra.launcher
    assert la._target_.endswith("submitit_launcher.SlurmLauncher")
    assert la.partition == "gpu" and la.gpus_per_node == gpus and la.cpus_per_task >= 8 and la.mem_gb >= 16
    assert la.timeout_min >= 240 and la.array_parallelism >= 32 and la.max_num_timeout == 0
    if config_name == "train":
        assert cfg.hydra.callbacks.collect_results._target_ == "milkit.training.collect.CollectResults"


@pytest.mark.timeout(400)
def test_torchrun_survival_reports_every_test_patient_once(tmp_path: Path) -> None:
    """The distributed sampler repeats a bag to even out an odd test fold and each rank sees half of it: the
    predictions file, the bootstrap CI and the metrics must still cover every test patient exactly once."""
    out = tmp_path / "ddp"
    _torchrun_two_nodes(["task=survival", "data=synthetic_survival", "data.source.n_patients=61",
                         "data.source.min_size=8", "data.source.max_size=16", "model.embed_dims=[16]",
                         "model.attn_dim=8", "cv.folds=3", "cv.run_folds=[0]", "trainer.max_epochs=2", "trainer.min_epochs=1", "task.bootstrap=50",
                         "data.eval_batch_size=4"], out, tmp_path)
    row = json.loads((out / "rank0" / "results.json").read_text())["folds"][0]
    preds = pd.read_csv(out / "rank0" / "fold0" / "test_predictions.csv", dtype={"bag_id": str})
    test_ids = pd.read_csv(out / "rank0" / "splits.csv", dtype={"bag_id": str}).query("fold == 0 and split == 'test'")
    assert len(test_ids) % 2 == 1  # the sampler pads: one bag is seen by both ranks
    assert sorted(preds["bag_id"]) == sorted(test_ids["bag_id"])
    cindex = harrell_cindex(torch.tensor(preds["risk"].to_numpy()), torch.tensor(preds["time"].to_numpy()),
                            torch.tensor(preds["event"].to_numpy(), dtype=torch.bool))
    assert row["test/cindex"] == pytest.approx(cindex, abs=1e-6)
    assert row["test/cindex_ci95_low"] <= row["test/cindex"] <= row["test/cindex_ci95_high"]
