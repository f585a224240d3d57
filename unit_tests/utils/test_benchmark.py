"""The shared step benchmark and the model benchmark (ratio table, fresh-process path, bad names)."""
from __future__ import annotations

import csv
import functools
import json

import pytest

from milkit.errors import ConfigError
from milkit.models import create_model
from milkit.utils import model_bench
from milkit.utils.benchmark import bench_parser, measure_step, write_rows


def test_measure_step_reports_time_memory_and_params() -> None:
    build = functools.partial(create_model, "abmil", 8, 2, embed_dims=(4,), attn_dim=2)
    r = measure_step(build, 50, in_dim=8, warmup=1, repeats=2)
    assert r["n"] == 50 and r["time_s"] > 0 and r["cpu_s"] >= 0 and r["peak_mb"] >= 0 and r["timed_steps"] == 2
    assert r["params"] == (8 * 4 + 4) + (4 * 2 + 2) + (2 + 1) + (4 * 2 + 2)


def test_measure_step_on_a_torchmil_peer() -> None:
    r = measure_step(functools.partial(model_bench.build_model, "torchmil.abmil", 8), 20, in_dim=8, repeats=1)
    assert r["time_s"] > 0 and r["params"] > 0


def test_rows_as_csv_and_json(tmp_path) -> None:
    args = bench_parser("x").parse_args(["--sizes", "5", "7", "--out", str(tmp_path / "r.csv")])
    assert args.sizes == [5, 7] and args.in_dim == 1024
    write_rows([{"n": 5, "time_s": 0.5}, {"n": 7, "error": "OOM"}], args.out)
    with open(args.out) as f:
        assert list(csv.DictReader(f)) == [{"error": "", "n": "5", "time_s": "0.5"},
                                           {"error": "OOM", "n": "7", "time_s": ""}]
    write_rows([{"n": 5}], str(tmp_path / "r.json"), {"device": "cpu"})
    assert json.loads((tmp_path / "r.json").read_text()) == {"device": "cpu", "rows": [{"n": 5}]}


def test_table_ratios_against_the_peer() -> None:
    rows = [{"model": "abmil", "n": 10, "time_s": 3.0, "cpu_s": 1.0, "peak_mb": 50.0, "params": 1e6},
            {"model": "torchmil.abmil", "n": 10, "time_s": 2.0, "cpu_s": 4.0, "peak_mb": 25.0, "params": 1e6},
            {"model": "transmil", "n": 10, "error": "out of memory"}]
    table = model_bench.format_table(rows)
    assert "| abmil | 10 | 3000.0 | 1000.0 | 50.0 | 1.00 | torchmil.abmil | 1.50 | 0.25 | 2.00 |" in table
    assert "| transmil | 10 | failed: out of memory |" in table


def test_fresh_process_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    rows = model_bench.main(["--models", "mean", "--sizes", "32", "--repeats", "1", "--no-peers", "--threads", "1",
                             "--device", "cpu"])
    assert rows[0]["model"] == "mean" and "error" not in rows[0]
    assert "| mean | 32 |" in capsys.readouterr().out


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--models: unknown model"):
        model_bench.main(["--models", "abmill"])
