"""R²T-ABMIL vs ABMIL vs TransMIL: fwd+bwd time and peak memory per bag, each run in a fresh process.

    PYTHONPATH=$PWD python scripts/bench_rrt.py --sizes 1000 10000 50000 [--device cuda] [--out bench.csv]

TransMIL comes from milkit's registry when registered, else torchmil's TransMIL is the stand-in
(512-d, 8 heads, 256 landmarks, 6 pinv iterations, as the official model).
"""
from __future__ import annotations

import functools

from milkit.models import create_model, list_models
from milkit.utils.benchmark import bench_parser, measure_isolated, write_csv


def build(name: str, in_dim: int):
    if name == "transmil (torchmil)":
        from torchmil.models import TransMIL
        return TransMIL((in_dim,), att_dim=512, n_heads=8, n_landmarks=256, pinv_iterations=6)
    return create_model(name, in_dim, 2)


def main() -> None:
    ap = bench_parser(__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
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
        write_csv(rows, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
