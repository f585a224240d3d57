"""An interrupted suite (Ctrl-C, or SIGTERM from a cluster's time limit) keeps a report of its finished runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from milkit.aut import runner
from milkit.aut.runner import run_suite
from milkit.errors import RunInterrupted
from unit_tests.lost_signal import RaisesSignalWhenDeleted

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(models=["mi_net"], tests=["single_concept"], epochs=2, n_train=200, n_test=100, batch_size=32,
            property_pairs=20, model_kwargs={"mi_net": {"embed_dims": [8]}}, verbose=False)


def test_ctrl_c_writes_the_report_of_the_finished_runs_and_stops(tmp_path, monkeypatch) -> None:
    real = runner.run_one
    calls = []

    def stop_at_the_second(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_one", stop_at_the_second)
    with pytest.raises(RunInterrupted, match=r"stopped by Ctrl-C after 1 of 3 runs.*aut_report\.md"):
        run_suite({**TINY, "seeds": [0, 1, 2], "output": str(tmp_path), "jobs": 1})
    data = json.loads((tmp_path / "aut_report.json").read_text())
    assert [r["seed"] for r in data["runs"]] == [0] and data["meta"]["n_runs"] == 1 and calls == [0, 1]
    assert data["meta"]["interrupted"] == "stopped by Ctrl-C after 1 of 3 runs"
    assert "**Interrupted** (stopped by Ctrl-C after 1 of 3 runs)" in (tmp_path / "aut_report.md").read_text()
    merged = run_suite({"merge": [str(tmp_path)], "verbose": False})  # an interrupted part stays marked
    assert merged["meta"]["interrupted"].endswith("stopped by Ctrl-C after 1 of 3 runs")


def test_a_swallowed_sigterm_still_stops_the_suite_after_the_run(tmp_path, monkeypatch) -> None:
    real = runner.run_one
    swallowed: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))

    def run_then_lost_sigterm(*args, **kwargs):
        rec = real(*args, **kwargs)
        RaisesSignalWhenDeleted(signal.SIGTERM)
        return rec

    monkeypatch.setattr(runner, "run_one", run_then_lost_sigterm)
    with pytest.raises(RunInterrupted, match=r"stopped by SIGTERM after 1 of 3 runs"):
        run_suite({**TINY, "seeds": [0, 1, 2], "output": str(tmp_path), "jobs": 1})
    assert swallowed == [RunInterrupted]
    assert json.loads((tmp_path / "aut_report.json").read_text())["meta"]["n_runs"] == 1


def test_ctrl_c_before_any_run_finishes_writes_nothing(tmp_path, monkeypatch) -> None:
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_one", stop)
    with pytest.raises(RunInterrupted, match="before the first run finished"):
        run_suite({**TINY, "seeds": [0], "output": str(tmp_path), "jobs": 1})
    assert not (tmp_path / "aut_report.json").exists()


def test_sigterm_stops_the_workers_and_the_cli_exits_130_with_a_report(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "scripts" / "aut.py"), "models=[mi_net]", "tests=[single_concept]",
            "seeds=16", "epochs=3", "n_train=200", "n_test=100", "property_pairs=20", "jobs=2",
            "+model_kwargs.mi_net={embed_dims: [8]}", f"output={tmp_path}"]  # 16 runs: long enough to be stopped
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    runs = tmp_path / "aut_runs.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (runs.exists() and runs.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = [ln for ln in err.splitlines() if ln.startswith("milkit:")]
    assert len(line) == 1 and "stopped by SIGTERM after" in line[0] and "aut_report.md" in line[0]
    data = json.loads((tmp_path / "aut_report.json").read_text())
    assert 1 <= data["meta"]["n_runs"] < 16 and data["meta"]["interrupted"].startswith("stopped by SIGTERM")
