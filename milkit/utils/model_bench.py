"""Forward + backward time and peak memory of registered models on one bag, with torchmil as the peer.

Every (model, bag size) is measured by ``milkit.utils.benchmark.measure`` (a fresh process on CPU). A step is
``loss = task loss + the model's own losses; loss.backward()`` (torchmil: ``compute_loss`` + ``backward``).
Failures (e.g. out of memory) are recorded and the run goes on. Used by ``scripts/bench_models.py``.
"""
from __future__ import annotations

import functools
import sys
from typing import Any

import torch
from torch import nn

from milkit.errors import ConfigError
from milkit.utils.benchmark import bench_parser, measure, step_kwargs, write_rows

__all__ = ["PEERS", "build_model", "format_table", "main"]

#: milkit model → torchmil peer measured alongside it (for the ratio columns)
PEERS = {"abmil": "torchmil.abmil", "gated_abmil": "torchmil.gated_abmil", "transmil": "torchmil.transmil",
         "clam_sb": "torchmil.clam_sb", "dsmil": "torchmil.dsmil"}


def build_model(name: str, in_dim: int) -> nn.Module:
    """A registered milkit model, or ``torchmil.<name>`` configured like milkit's defaults."""
    if not name.startswith("torchmil."):
        from milkit.models import create_model

        return create_model(name, in_dim=in_dim, num_classes=2)
    import torchmil.models as tm

    shape = (in_dim,)
    fc = lambda: nn.Sequential(nn.Linear(in_dim, 512), nn.ReLU())  # noqa: E731
    builders = {
        "abmil": lambda: tm.ABMIL(in_shape=shape, att_dim=128, feat_ext=fc()),
        "gated_abmil": lambda: tm.ABMIL(in_shape=shape, att_dim=128, gated=True, feat_ext=fc()),
        "transmil": lambda: tm.TransMIL(in_shape=shape, att_dim=512, n_layers=2, n_heads=8, n_landmarks=256,
                                        pinv_iterations=6),
        "clam_sb": lambda: tm.CLAM_SB(in_shape=shape, att_dim=256, gated=True, k_sample=8, feat_ext=fc()),
        "dsmil": lambda: tm.DSMIL(in_shape=shape, att_dim=128, nonlinear_q=True, nonlinear_v=True),
    }
    return builders[name.split(".", 1)[1]]()


def _fmt_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['model']:<22} {r['n']:>7}  failed: {r['error']}"
    return (f"{r['model']:<22} {r['n']:>7} {r['time_s'] * 1e3:>11.1f} ms {r['cpu_s'] * 1e3:>11.1f} CPU-ms "
            f"{r['peak_mb']:>10.1f} MB {r['params'] / 1e6:>8.2f} M")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table with milkit/torchmil ratios where a peer was measured at the same size."""
    by_key = {(r["model"], r["n"]): r for r in rows}
    lines = ["| model | N | fwd+bwd ms | CPU ms | peak MB | params M | peer | time ratio | CPU ratio | mem ratio |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['n']} | failed: {r['error']} | | | | | | | |")
            continue
        peer = by_key.get((PEERS.get(r["model"], ""), r["n"]))
        ratios = ["", "", ""]
        if peer and "error" not in peer:
            ratios = [f"{r[k] / peer[k]:.2f}" if peer[k] > 0 else "" for k in ("time_s", "cpu_s", "peak_mb")]
        lines.append(f"| {r['model']} | {r['n']} | {r['time_s'] * 1e3:.1f} | {r['cpu_s'] * 1e3:.1f} | "
                     f"{r['peak_mb']:.1f} | {r['params'] / 1e6:.2f} | {peer['model'] if peer else ''} | "
                     f"{' | '.join(ratios)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from milkit.models import list_models

    ap = bench_parser(__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list_models(), help="registered model names (default: all)")
    ap.add_argument("--no-peers", action="store_true", help="skip the torchmil peers")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown} (known: {', '.join(list_models())})")
    names = list(args.models) + ([] if args.no_peers else [PEERS[m] for m in args.models if m in PEERS])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# milkit model benchmark: one bag, D = {args.in_dim}, fwd+bwd, device: {device}, dtype {args.dtype}",
          file=sys.stderr)
    rows = []
    for n in args.sizes:
        for name in names:
            res = measure(functools.partial(build_model, name, args.in_dim), n, args.threads, **step_kwargs(args))
            rows.append({"model": name, **res})
            print(_fmt_row(rows[-1]), file=sys.stderr, flush=True)
    print(format_table(rows))
    if args.out:
        write_rows(rows, args.out, {"device": device, "dtype": args.dtype})
        print(f"results written to {args.out}", file=sys.stderr)
    return rows
