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
