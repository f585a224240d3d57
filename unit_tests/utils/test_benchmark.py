"""The model benchmark: one measurement, the ratio table, the subprocess path and bad model names."""
from __future__ import annotations

import pytest

from milkit.errors import ConfigError
from milkit.utils import benchmark


def test_measure_one_bag() -> None:
    res = benchmark.measure("mean", 64, repeats=2)
    assert res["time_s"] > 0 and res["cpu_s"] > 0 and res["timed_steps"] == 2 and res["params"] > 0


def test_table_ratios_against_the_peer() -> None:
    rows = [{"model": "abmil", "n": 10, "time_s": 3.0, "cpu_s": 1.0, "peak_mb": 50.0, "params": 1e6},
            {"model": "torchmil.abmil", "n": 10, "time_s": 2.0, "cpu_s": 4.0, "peak_mb": 25.0, "params": 1e6},
            {"model": "transmil", "n": 10, "error": "out of memory"}]
    table = benchmark.format_table(rows)
    assert "| abmil | 10 | 3000.0 | 1000.0 | 50.0 | 1.00 | torchmil.abmil | 1.50 | 0.25 | 2.00 |" in table
    assert "| transmil | 10 | failed: out of memory |" in table


def test_child_process_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    benchmark.main(["--models", "mean", "--sizes", "32", "--repeats", "1", "--no-peers", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| mean | 32 |" in out and "failed" not in out


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--models: unknown model"):
        benchmark.main(["--models", "abmill"])
