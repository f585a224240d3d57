"""Selective scan and MambaMIL vs baselines: fwd+bwd time and peak memory on one bag (D = 1024).

    PYTHONPATH=$PWD python scripts/bench_mamba.py                    # CPU: N = 1k, 10k, 50k
    PYTHONPATH=$PWD python scripts/bench_mamba.py --device cuda      # GPU (about 1-2 min on an H100)

Scan rows: one Mamba block's scan (d_inner 1024, d_state 16, inputs from the bag; gradients to everything):
milkit's scan as ``impl="auto"`` picks it (on the CPU the C kernel), milkit's PyTorch scan (``impl="ref"``), vs the
plain loop (mamba-ssm's ``selective_scan_ref`` iterating unbind-ed steps, N <= --loop-max)
and the same loop with per-step indexing as written upstream (O(L^2) backward, N <= --index-max), plus
mamba-ssm's kernels when installed. Model rows: MambaMIL (SR, plain) vs TransMIL (milkit's when registered,
and torchmil's). CPU rows run each in a fresh process (peak RSS); CUDA rows run in this process.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util

import torch
from torch import nn

from milkit.models import create_model, list_models
from milkit.models.layers.selective_scan import mamba_ssm_available, selective_scan, selective_scan_loop
from milkit.utils.benchmark import bench_parser, measure, step_kwargs, write_rows


def index_loop_scan(u, delta, A, B, C, D, delta_bias):
    """The loop exactly as mamba-ssm's ``selective_scan_ref``: ``x[:, :, i]`` per step (backward O(L²))."""
    delta = nn.functional.softplus(delta + delta_bias[:, None])
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = delta_a[:, :, i] * h + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    return torch.stack(ys, dim=2) + u * D[:, None]


class ScanBench(nn.Module):
    """One selective scan over the bag: ``u = s_u ⊙ x``, ``delta = s_d ⊙ x``, ``[B | C] = x W``."""

    def __init__(self, impl: str, d: int, n: int = 16) -> None:
        super().__init__()
        self.impl = impl
        self.s_u, self.s_d = nn.Parameter(torch.ones(d)), nn.Parameter(torch.full((d,), 0.1))
        self.proj = nn.Linear(d, 2 * n, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1.0)).repeat(d, 1))
        self.D, self.dt_bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.full((d,), -3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, delta = (x * self.s_u).mT, (x * self.s_d).mT
        B, C = self.proj(x).mT.chunk(2, dim=1)
        A = -torch.exp(self.A_log)
        if self.impl == "loop":
            return selective_scan_loop(u, delta, A, B, C, self.D, None, self.dt_bias, True)
        if self.impl == "index":
            return index_loop_scan(u, delta, A, B, C, self.D, self.dt_bias)
        return selective_scan(u, delta, A, B, C, self.D, None, self.dt_bias, True, impl=self.impl)


def build(case: str, in_dim: int) -> nn.Module:
    kind, _, name = case.partition(":")
    if kind == "scan":
        return ScanBench({"milkit": "auto", "milkit-torch": "ref", "mamba-ssm": "cuda"}.get(name, name), in_dim)
    if name == "transmil (torchmil)":
        from torchmil.models import TransMIL
        return TransMIL((in_dim,), att_dim=512, n_heads=8, n_landmarks=256, pinv_iterations=6)
    if name.endswith(" (mamba-ssm)"):
        return create_model(name.split()[0], in_dim, 2, scan_impl="cuda")
    return create_model(name, in_dim, 2)


def cases(n: int, args: argparse.Namespace) -> list[str]:
    kernels = args.device == "cuda" and mamba_ssm_available()
    out = ["scan:milkit", "scan:milkit-torch"] + (["scan:mamba-ssm"] if kernels else [])
    out += (["scan:loop"] if n <= args.loop_max else []) + (["scan:index"] if n <= args.index_max else [])
    out += ["model:mambamil", "model:mambamil_plain"] + (["model:mambamil (mamba-ssm)"] if kernels else [])
    out += ["model:transmil"] if "transmil" in list_models() else []
    return out + (["model:transmil (torchmil)"] if importlib.util.find_spec("torchmil") else [])


def main() -> None:
    ap = bench_parser(__doc__.splitlines()[0])
    ap.add_argument("--loop-max", type=int, default=10000, help="largest N for the unbind loop")
    ap.add_argument("--index-max", type=int, default=1000, help="largest N for the per-step-indexing loop")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    kw = step_kwargs(args)
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}")
    rows: list[dict] = []
    print("| case | N | fwd+bwd s | CPU s | peak GiB | time / milkit scan or MambaMIL |\n|---|---|---|---|---|---|")
    for n in args.sizes:
        ref: dict[str, float] = {}
        for case in cases(n, args):
            make = functools.partial(build, case, args.in_dim)
            ckw = {**kw, "warmup": 0} if case == "scan:index" else kw  # minutes per run on CPU; no warm-up
            r = measure(make, n, args.threads, **ckw)
            rows.append({"case": case, **r})
            if "error" in r:
                print(f"| {case} | {n} | {r['error']} | | |", flush=True)
                continue
            kind = case.split(":")[0]
            ref.setdefault(kind, r["time_s"])
            ratio = r["time_s"] / ref[kind]
            print(f"| {case} | {n} | {r['time_s']:.3f} | {r['cpu_s']:.3f} | {r['peak_mb'] / 1024:.3f} | {ratio:.2f}x |",
                  flush=True)
    if args.out:
        write_rows(rows, args.out)
        print(f"wrote {args.out}")

