"""Data loading at cohort scale: ABMIL / TransMIL training epochs end-to-end from TRIDENT-layout feature files
(cold and warm page cache, float16 and float32 on disk) against compute-only epochs on bags in RAM.

    python scripts/bench_loading.py --quick                      # CI size, seconds
    python scripts/bench_loading.py --root /work/bench_cohort    # the full cohort (see docs/benchmarks.md)

Prints one row per configuration: the ratio compute-only ÷ end-to-end epoch time (1.0 = loading is free), and the
time the training loop spent blocked waiting for the next batch (its share of the epoch; on a machine shared
with other jobs this is the steadier measure, as the wall times of all rows move with the load); peak RSS.
Writes the rows as JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from milkit.utils.io import atomic_path
from milkit.utils.loading_bench import loader_defaults, run_epochs, run_isolated, write_cohort


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=None, help="cohort folder (kept and reused); default: a temp dir")
    p.add_argument("--quick", action="store_true",
                   help="CI size: 6 small bags of D=64, ABMIL only, in this process (peak RSS is cumulative)")
    p.add_argument("--bags", type=int, default=64)
    p.add_argument("--min-n", type=int, default=4000)
    p.add_argument("--max-n", type=int, default=16000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    p.add_argument("--models", nargs="+", default=["abmil", "transmil"])
    p.add_argument("--epoch-bags", type=int, default=None, help="epochs over the first K bags of the cohort only")
    p.add_argument("--transmil-bags", type=int, default=6, help="TransMIL epochs over the first K bags only")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the training process")
    p.add_argument("--num-workers", type=int, default=None, help="override the config default")
    p.add_argument("--drop-caches", action="store_true",
                   help="cold = /proc/sys/vm/drop_caches (root; slows every process) instead of fadvise per file")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.quick:
        a.bags, a.min_n, a.max_n, a.dim, a.models = 6, 200, 800, 64, ["abmil"]
    loader = loader_defaults()
    if a.num_workers is not None:
        loader["num_workers"] = a.num_workers
    base = a.root or Path(tempfile.mkdtemp(prefix="milkit_bench_loading_"))
    print(f"loader settings (conf/data/features.yaml): {loader}; load average {os.getloadavg()[0]:.1f}")
    rows = []
    for dtype in a.dtypes:
        cohort = write_cohort(base / f"{a.bags}x{a.min_n}-{a.max_n}x{a.dim}_{dtype}", a.bags, a.min_n, a.max_n,
                              a.dim, dtype)
        for model in a.models:
            max_bags = a.transmil_bags if model == "transmil" else a.epoch_bags
            runs = [("compute", "-"), ("e2e", "cold"), ("e2e", "warm")]
            run = run_epochs if a.quick else run_isolated
            res = {k: run(cohort=cohort, model_name=model, mode=m, cache=c, loader=loader,
                                   threads=a.threads, max_bags=max_bags,
                                   system_wide_drop=a.drop_caches) for k, (m, c) in zip(runs, runs)}
            for (mode, cache), row in res.items():
                if "error" in row:
                    raise SystemExit(f"bench_loading: {model} {mode} {cache} failed: {row['error']}")
                row["dtype"] = dtype
                row["ratio"] = round(res[("compute", "-")]["epoch_s"] / row["epoch_s"], 3)
                rows.append(row)
                print(f"{dtype:8s} {model:9s} {mode:8s} {cache:5s} bags={row['bags']:4d} GB={row['gb_on_disk']:6.2f} "
                      f"epoch={row['epoch_s']:8.2f}s cpu={row['main_cpu_s']:8.2f}s compute/e2e={row['ratio']:.3f} "
                      f"wait={row['data_wait_s']:6.2f}s ({100 * row['wait_share']:4.1f}%) "
                      f"peakRSS={row['peak_rss_gb']:.2f}GB worker={row['worker_peak_rss_gb']:.2f}GB "
                      f"({row['evict']})")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if a.out:
        with atomic_path(a.out) as tmp:
            tmp.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
