"""R²T-ABMIL vs ABMIL vs TransMIL: fwd+bwd time and peak memory per bag, each run in a fresh process.

    PYTHONPATH=$PWD python scripts/bench_rrt.py --sizes 1000 10000 50000 [--device cuda] [--out bench.csv]

TransMIL comes from milkit's registry when registered, else torchmil's TransMIL is the stand-in
(512-d, 8 heads, 256 landmarks, 6 pinv iterations, as the official model).
"""
from __future__ import annotations

import argparse
import csv
import functools

from milkit.models import create_model, list_models
from milkit.utils.benchmark import measure_isolated
from milkit.utils.io import atomic_path


def build(name: str, in_dim: int):
    if name == "transmil (torchmil)":
        from torchmil.models import TransMIL
        return TransMIL((in_dim,), att_dim=512, n_heads=8, n_landmarks=256, pinv_iterations=6)
    return create_model(name, in_dim, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--in-dim", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: torch's)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the rows as CSV here")
    args = ap.parse_args()
    transmil = "transmil" if "transmil" in list_models() else "transmil (torchmil)"
    rows = []
    print("| model | N | fwd+bwd s | peak GiB | params |\n|---|---|---|---|---|")
    for n in args.sizes:
        for name in ["abmil", "rrt_abmil", transmil]:
            r = measure_isolated(functools.partial(build, name, args.in_dim), n, threads=args.threads,
                                 in_dim=args.in_dim, device=args.device, dtype=args.dtype,
                                 warmup=args.warmup, repeats=args.repeats)
            rows.append({"model": name, **r})
            cells = [r["error"], "", ""] if "error" in r else [f"{r['seconds']:.3f}", f"{r['peak_gib']:.3f}", r["params"]]
            print(f"| {name} | {n} | " + " | ".join(map(str, cells)) + " |", flush=True)
    if args.out:
        with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
