"""Every GPU path of milkit in one run (about 8 minutes on one GPU), results in one JSON named after the card.

    python scripts/gpu_check.py [--out DIR] [--budget-s 480]

1. selective scan: milkit's PyTorch scan on CUDA against the CPU float64 reference (outputs and gradients), and
   mamba-ssm's kernel against the same reference when ``mamba_ssm`` imports;
2. ``scripts/bench_mamba.py --device cuda`` (scan and MambaMIL fwd+bwd at 1k and 10k instances);
3. one bf16-mixed training epoch per model family (a ``-m`` sweep of ``scripts/train.py`` on synthetic bags);
4. the ViT-L/16 bf16 extraction ratio (``scripts/bench_preprocess.py --quick``, GPU part only);
5. DDP over all GPUs present (``trainer=ddp``).

Each step runs in its own process with a share of the time budget; a step that fails or runs out of time is
recorded with its exit status and last lines, and the run goes on. Without a CUDA device the script says so in
one line and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["abmil", "gated_abmil", "clam_sb", "dsmil", "transmil", "mambamil", "rrt_abmil", "mi_net", "mean"]
TRAIN = ["data=synthetic", "data.in_dim=1024", "data.source.in_dim=1024", "data.source.n_bags=64",
         "data.source.min_size=500", "data.source.max_size=4000", "data.batch_size=1", "cv.folds=4",
         "cv.run_folds=[0]", "trainer.max_epochs=1", "trainer.min_epochs=1", "trainer.enable_progress_bar=false"]


def scan_equivalence(n: int = 2048, device: str = "cuda") -> dict[str, Any]:
    """Max abs difference of outputs, and of input gradients relative to their scale: the PyTorch scan (and
    mamba-ssm's kernel, when it imports) in float32 on ``device`` against the CPU float64 reference."""
    from milkit.models.layers.selective_scan import mamba_ssm_available, selective_scan

    g = torch.Generator().manual_seed(0)
    b, d, s = 2, 64, 16
    args = {"u": torch.randn(b, d, n, generator=g), "delta": torch.randn(b, d, n, generator=g) * 0.5,
            "A": -torch.rand(d, s, generator=g) - 0.1, "B": torch.randn(b, s, n, generator=g),
            "C": torch.randn(b, s, n, generator=g), "D": torch.randn(d, generator=g),
            "z": torch.randn(b, d, n, generator=g), "delta_bias": torch.randn(d, generator=g) * 0.1}

    def run(device: str, dtype: torch.dtype, impl: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaf = {k: v.to(device, dtype).requires_grad_(k in ("u", "delta", "B", "C")) for k, v in args.items()}
        y = selective_scan(**leaf, delta_softplus=True, impl=impl)
        y.backward(torch.ones_like(y))
        return y.detach().double().cpu(), [leaf[k].grad.double().cpu() for k in ("u", "delta", "B", "C")]

    ref_y, ref_g = run("cpu", torch.float64, "ref")
    out: dict[str, Any] = {"L": n, "B": b, "D": d, "N": s}
    impls = {"torch": "ref"} | ({"mamba_ssm": "cuda"} if device == "cuda" and mamba_ssm_available() else {})
    for name, impl in impls.items():
        y, grads = run(device, torch.float32, impl)
        out[name] = {"max_abs_y": float((y - ref_y).abs().max()),
                     "max_abs_grad": max(float((a - r).abs().max() / r.abs().max()) for a, r in zip(grads, ref_g)),
                     "y_scale": float(ref_y.abs().max())}
    out["mamba_ssm"] = out.get("mamba_ssm", "not importable")
    return out


def _step(cmd: list[str], timeout: float, out_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 10), env=env, cwd=out_dir)
        rc, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": text.strip().splitlines()[-25:]}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="folder for the JSON")
    ap.add_argument("--budget-s", type=float, default=480.0, help="whole run, shared between the steps")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check")
        return 0
    card = torch.cuda.get_device_name(0)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="milkit_gpu_check_"))
    report: dict[str, Any] = {"card": card, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
                              "cuda": torch.version.cuda, "steps": {}}
    deadline = time.perf_counter() + args.budget_s
    share = lambda frac: frac * max(0.0, deadline - time.perf_counter())  # noqa: E731 - of the time left
    py = sys.executable

    t0 = time.perf_counter()
    try:
        report["steps"]["scan_equivalence"] = {**scan_equivalence(), "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as exc:  # noqa: BLE001 - recorded, the other steps still run
        report["steps"]["scan_equivalence"] = {"error": f"{type(exc).__name__}: {exc}"}
    steps = [
        ("bench_mamba", 0.2, [py, str(REPO / "scripts" / "bench_mamba.py"), "--device", "cuda", "--sizes", "1000",
                              "10000", "--repeats", "3", "--max-seconds", "20", "--out", str(work / "mamba.json")]),
        ("train_bf16", 0.35, [py, str(REPO / "scripts" / "train.py"), "-m", f"model={','.join(FAMILIES)}", *TRAIN,
                              "trainer=gpu", "trainer.precision=bf16-mixed", f"paths.log_dir={work}/train"]),
        ("extract_vitl_bf16", 0.6, [py, str(REPO / "scripts" / "bench_preprocess.py"), "--quick", "--skip", "segtile",
                                    "cpu", "--workdir", str(work / "bench"), "--json", str(work / "extract.json")]),
        ("ddp", 1.0, [py, str(REPO / "scripts" / "train.py"), "model=abmil", *TRAIN, "trainer=ddp",
                      "trainer.precision=bf16-mixed", f"paths.log_dir={work}/ddp"]),
    ]
    for name, frac, cmd in steps:
        report["steps"][name] = _step(cmd, share(frac), work)
        print(f"gpu_check: {name}: rc={report['steps'][name]['rc']} ({report['steps'][name]['seconds']} s)", flush=True)
    report["steps"]["bench_mamba"]["rows"] = _read_json(work / "mamba.json")
    report["steps"]["extract_vitl_bf16"]["result"] = (_read_json(work / "extract.json") or {}).get("gpu")
    tables = sorted((work / "train").glob("train/multiruns/*/results_table.csv"))
    if tables:
        import pandas as pd

        report["steps"]["train_bf16"]["table"] = pd.read_csv(tables[0]).to_dict(orient="records")
    name = re.sub(r"[^A-Za-z0-9]+", "_", card).strip("_")
    path = args.out / f"gpu_check_{name}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu_check: {card}: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
