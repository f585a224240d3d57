"""The fwd+bwd step benchmark used by scripts/bench_rrt.py."""
from __future__ import annotations

import functools

from milkit.models import create_model
from milkit.utils.benchmark import measure_step


def test_measure_step_reports_time_memory_and_params() -> None:
    build = functools.partial(create_model, "abmil", 8, 2, embed_dims=(4,), attn_dim=2)
    r = measure_step(build, 50, in_dim=8, warmup=1, repeats=2)
    assert r["n"] == 50 and r["seconds"] > 0 and r["peak_gib"] >= 0
    assert r["params"] == (8 * 4 + 4) + (4 * 2 + 2) + (2 + 1) + (4 * 2 + 2)


def test_bench_parser_and_csv(tmp_path) -> None:
    import csv

    from milkit.utils.benchmark import bench_parser, write_csv

    args = bench_parser("x").parse_args(["--sizes", "5", "7", "--out", str(tmp_path / "r.csv")])
    assert args.sizes == [5, 7] and args.in_dim == 1024 and args.device == "cpu"
    write_csv([{"n": 5, "seconds": 0.5}, {"n": 7, "error": "OOM"}], args.out)
    with open(args.out) as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"error": "", "n": "5", "seconds": "0.5"}, {"error": "OOM", "n": "7", "seconds": ""}]
