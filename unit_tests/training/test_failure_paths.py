"""Training and evaluation failures a user meets: wrong method, unwritable output, full disk, Ctrl-C, empty
cohort, unknown fold. Each ends in one line naming the path or value, a defined exit status, and no output
under its final name."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileOpener

from milkit.cli import run_safely
from milkit.errors import DataError, RunInterrupted
from milkit.training.checkpoint import load_checkpoint
from milkit.training.evaluate import evaluate
from milkit.training.train import train

from unit_tests.lost_signal import RaisesSignalWhenDeleted, ctrl_c_acts
from unit_tests.small_disk import small_tmpfs

from .conftest import FAST, compose_cfg

ROOT = Path(__file__).resolve().parents[2]


def _exit_line(fn, cfg, capsys) -> tuple[int, str]:
    """Run ``fn(cfg)`` as the CLI does; its exit status and its single stderr line."""
    with pytest.raises(SystemExit) as info:
        run_safely(fn, cfg)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return info.value.code, lines[0]


def _script(name: str, args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / name), *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _default_sigint() -> None:
    """In the child: Ctrl-C acts even when the test run itself ignores SIGINT (a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_continual_method_is_refused_by_the_trainer(make_cfg, capsys) -> None:
    code, line = _exit_line(train, make_cfg("method=finetune"), capsys)
    assert code == 2 and "milkit.continual.methods.FineTune is a continual method" in line
    assert "scripts/continual.py" in line
    code, line = _exit_line(train, make_cfg("method._target_=torch.nn.Linear"), capsys)
    assert code == 2 and "torch.nn.Linear is not a milkit TrainingMethod" in line


def test_a_full_disk_is_one_line_before_hydra_writes(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "64k", fill=True) as disk:
        proc = _script("train.py", [*FAST, f"hydra.run.dir={disk}/run", f"paths.log_dir={disk}/logs"], tmp_path)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err.strip() == (f"milkit: error: run folder (hydra.run.dir) {disk}/run: "
                                                        "cannot write here (no space left on device)")
        assert not list((disk / "run").iterdir())  # neither .hydra/ nor the probe


def test_mhim_refuses_a_model_registered_without_instance_scores(make_cfg, capsys, monkeypatch) -> None:
    from milkit.models import MODELS

    real_meta = MODELS.meta
    monkeypatch.setattr(MODELS, "meta", lambda name: {**real_meta(name), "instance_scores": False})
    code, line = _exit_line(train, make_cfg("method=mhim"), capsys)
    assert code == 2 and line.endswith("reads instance scores, which model 'gated_abmil' does not return (registry "
                                       "metadata instance_scores=False)")
    monkeypatch.undo()
    assert real_meta("gated_abmil")["instance_scores"]  # every registered model returns them today


def test_unwritable_output_is_one_line_before_hydra_writes(tmp_path: Path, make_cfg, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # Hydra's own run folder (.hydra/) under a regular file: checked before Hydra creates it
    proc = _script("train.py", [*FAST, f"paths.log_dir={blocker}/logs"], tmp_path)
    _, err = proc.communicate(timeout=120)
    (line,) = err.strip().splitlines()
    assert proc.returncode == 2 and line.startswith(f"milkit: error: run folder (hydra.run.dir) {blocker}/logs/")
    assert line.endswith(f"cannot create a folder there ({blocker} is a file, not a folder)")
    # the training output folder itself
    cfg = make_cfg()
    cfg.paths.output_dir = f"{blocker}/out"
    code, line = _exit_line(train, cfg, capsys)
    assert code == 2 and line == (f"milkit: error: output {blocker}/out: cannot create a folder there "
                                  f"({blocker} is a file, not a folder)")
    assert blocker.is_file() and blocker.read_text() == ""


def test_disk_full_while_saving_a_checkpoint(make_cfg, monkeypatch, capsys) -> None:
    real_write = LocalFileOpener.write

    def full_disk(self, data):
        if str(self.path).endswith(".ckpt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(LocalFileOpener, "write", full_disk)
    cfg = make_cfg()
    code, line = _exit_line(train, cfg, capsys)
    out = Path(cfg.paths.output_dir)
    assert code == 2
    assert line == f"milkit: error: fold0: cannot save to {out}/fold0/checkpoints: no space left on device"
    assert not [p for p in out.rglob("*") if p.is_file() and "ckpt" in p.name]  # nothing half-written, no temp


def test_a_swallowed_ctrl_c_still_stops_training_after_the_batch(make_cfg, capsys, monkeypatch) -> None:
    from milkit.training.module import MILLitModule

    swallowed: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))
    real = MILLitModule.training_step

    def step_then_lost_ctrl_c(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        RaisesSignalWhenDeleted()
        return loss

    monkeypatch.setattr(MILLitModule, "training_step", step_then_lost_ctrl_c)
    cfg = make_cfg("trainer.max_epochs=5")
    with ctrl_c_acts():
        code, line = _exit_line(train, cfg, capsys)
    out = Path(cfg.paths.output_dir)
    assert swallowed == [RunInterrupted]  # the exception itself was lost ...
    assert code == 130 and line == (f"milkit: interrupted: fold0 stopped in epoch 0; finished folds kept in {out}: "
                                    "none (an interrupted fold's checkpoints stay in checkpoints/incomplete/, never "
                                    "taken as finished)")  # ... the flag was not: stopped after the first batch
    assert not (out / "results.json").exists()


def test_ctrl_c_keeps_finished_folds_and_marks_the_interrupted_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*[a for a in FAST if not a.startswith(("trainer.max_epochs", "cv.run_folds"))], "cv.run_folds=[0,1]",
            "trainer.max_epochs=1000", "callbacks.early_stopping=null", f"hydra.run.dir={run}"]
    proc = _script("train.py", args, tmp_path, preexec_fn=_default_sigint)
    staged = run / "fold0" / "checkpoints" / "incomplete" / "best.ckpt"
    deadline = time.monotonic() + 180
    while not staged.exists():  # fold0 has saved a checkpoint and is still training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    (line,) = err.strip().splitlines()
    assert line.startswith("milkit: interrupted: fold0 stopped in epoch ")
    assert f"finished folds kept in {run}: none" in line and "checkpoints/incomplete/" in line
    assert not (run / "fold0" / "checkpoints" / "best.ckpt").exists() and not (run / "results.json").exists()
    with pytest.raises(DataError, match="did not finish"):  # eval.py and infer_slide.py refuse it
        load_checkpoint(staged)


def test_empty_or_header_only_cohort_csv(tmp_path: Path, make_cfg, capsys) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("slide_id,case_id,label\n")
    for name, reason in (("empty.csv", "is empty (no columns)"), ("header.csv", "has a header but no rows")):
        cfg = make_cfg("data=features", f"data.source.feature_dir={tmp_path}",
                       f"data.source.cohort_csv={tmp_path / name}", fast=False)
        code, line = _exit_line(train, cfg, capsys)
        assert code == 2 and line == f"milkit: error: {tmp_path / name}: cohort CSV {reason}"
        assert not Path(cfg.paths.output_dir, "splits.csv").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train(compose_cfg([*FAST, "trainer.max_epochs=1"], out))
    return out


@pytest.mark.parametrize("overrides, message", [
    (["splits_csv={splits}", "fold=7"], "fold=7 is not in {splits} (folds: 0, 1, 2)"),
    (["splits_csv={splits}", "split=tset"], "split=tset is not a split name (use train, val, test)"),
    (["fold=2"], "fold=2 split=test select from a split table: give splits_csv=<run>/splits.csv (without it every "
                 "bag is scored)"),
    (["splits_csv={splits}", "fold=1"], "{ckpt}: trained as fold0, but 8 of the 8 selected bags of fold 1 in "
                                        "{splits} were in its training or validation split (the scores would leak); "
                                        "evaluate fold=0, or bags it has not seen"),
])
def test_eval_with_an_unknown_fold_or_split(trained_run: Path, tmp_path: Path, capsys, overrides: list[str],
                                            message: str) -> None:
    splits, ckpt = trained_run / "splits.csv", trained_run / "fold0/checkpoints/best.ckpt"
    cfg = compose_cfg([f"ckpt_path={ckpt}", *[o.format(splits=splits) for o in overrides]], tmp_path, "eval")
    code, line = _exit_line(evaluate, cfg, capsys)
    assert code == 2 and line == "milkit: error: " + message.format(splits=splits, ckpt=ckpt)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "predictions.csv").exists()


def test_eval_of_its_own_fold_may_score_any_split(trained_run: Path, tmp_path: Path) -> None:
    splits = trained_run / "splits.csv"
    cfg = compose_cfg([f"ckpt_path={trained_run / 'fold0/checkpoints/best.ckpt'}", f"splits_csv={splits}", "fold=0",
                       "split=train"], tmp_path, "eval")
    assert evaluate(cfg)["n_bags"] == len(pd.read_csv(splits).query("fold == 0 and split == 'train'"))
