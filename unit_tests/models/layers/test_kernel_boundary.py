"""The boundary of milkit's C kernels: argument checks, build outside collection, per-CPU cache, safe fallback."""
from __future__ import annotations

import logging
import runpy
from pathlib import Path

import pytest
import torch

from milkit.models.layers import cpu_kernels
from milkit.models.layers.causal_conv import causal_depthwise_conv1d
from milkit.models.layers.gate import gated_sum
from milkit.models.layers.scan_kernel import scan_forward

ROOT = Path(__file__).resolve().parents[3]
needs_kernel = pytest.mark.skipif(not cpu_kernels.can_build(), reason="no C compiler to build milkit's CPU kernels")


def scan_inputs(bsz=2, length=9, d=6, n=4) -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(bsz, length, d), delta=r(bsz, length, d).abs(), A=-r(d, n).abs(), B=r(bsz, length, n),
                C=r(bsz, length, n), D=r(d), bias=r(d), order=None, softplus=True)


@needs_kernel
@pytest.mark.parametrize(("change", "message"), [
    ({"u": lambda t: t.double()}, r"'u' must be a float32 CPU tensor of shape \(2, 9, 6\), got float64"),
    ({"B": lambda t: t[:, :, :3]}, r"'B' must be a float32 CPU tensor of shape \(2, 9, 4\), got float32 on cpu, "
                                   r"shape \(2, 9, 3\)"),
    ({"C": lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)}, r"'C' must be contiguous, got strides"),
    ({"D": lambda t: t[:5]}, r"'D' must be a float32 CPU tensor of shape \(6,\)"),
    ({"order": lambda t: torch.zeros(2, 9, dtype=torch.int32)}, r"'order' must be a int64 CPU tensor"),
])
def test_scan_arguments_are_checked_before_the_call(change: dict, message: str) -> None:
    inputs = scan_inputs()
    y, _ = scan_forward(**inputs)  # the valid call runs
    assert y.shape == (2, 9, 6) and torch.isfinite(y).all()
    for key, fn in change.items():
        inputs[key] = fn(inputs[key])
    with pytest.raises(ValueError, match="milkit CPU kernel scan_fwd: " + message):
        scan_forward(**inputs)


@needs_kernel
def test_conv_and_gate_arguments_are_checked() -> None:
    x = torch.randn(2, 7, 8)
    with pytest.raises(ValueError, match=r"conv_fwd: 'weight \(k, C\)' must be a float32 CPU tensor of shape \(4, 8\)"):
        causal_depthwise_conv1d(x, torch.randn(5, 1, 4), impl="cpu")  # 5 channels of weights for 8
    with pytest.raises(ValueError, match=r"conv_fwd: 'bias' must be a float32 CPU tensor of shape \(8,\)"):
        causal_depthwise_conv1d(x, torch.randn(8, 1, 4), torch.randn(3), impl="cpu")
    with pytest.raises(ValueError, match=r"gate_fwd: 'z' must be a float32 CPU tensor of shape \(2, 7, 8\)"):
        gated_sum(x, torch.randn(2, 7, 6), impl="cpu")


def test_cache_key_follows_the_cpu_and_the_flags(monkeypatch) -> None:
    intel = "model name : Intel Xeon\nflags : sse sse2 avx2 avx512f"
    assert cpu_kernels.cache_key(intel) == cpu_kernels.cache_key(intel)
    assert cpu_kernels.cache_key(intel) != cpu_kernels.cache_key(intel.replace(" avx512f", ""))
    assert cpu_kernels.cache_key(intel) != cpu_kernels.cache_key(intel.replace("Xeon", "Xeon Gold"))
    before = cpu_kernels.cache_key(intel)
    monkeypatch.setenv("MILKIT_KERNEL_CFLAGS", "-mno-avx512f")
    assert cpu_kernels.cache_key(intel) != before
    assert cpu_kernels.library_path().name == f"milkit_cpu_{cpu_kernels.cache_key()}.so"


def test_an_unloadable_cached_library_falls_back_with_one_warning(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("MILKIT_CACHE", str(tmp_path))
    bad = cpu_kernels.library_path()
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x7fELF not really a shared library")  # e.g. built by another machine, or cut short
    cpu_kernels.lib.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="milkit"):
            assert not cpu_kernels.available()
            x, w = torch.randn(1, 6, 4), torch.randn(4, 1, 3)
            got = causal_depthwise_conv1d(x, w, silu=True)  # impl="auto" takes the PyTorch path
            assert not cpu_kernels.available()
        torch.testing.assert_close(got, causal_depthwise_conv1d(x, w, silu=True, impl="torch"), rtol=0, atol=0)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "using the PyTorch paths" in warnings[0] and f"delete {bad}" in warnings[0]
    finally:
        cpu_kernels.lib.cache_clear()


def test_collecting_the_kernel_tests_builds_nothing(tmp_path, monkeypatch) -> None:
    """The skip marks of the kernel tests (evaluated at collection) only look for a compiler or a cached build."""
    monkeypatch.setenv("MILKIT_CACHE", str(tmp_path))
    cpu_kernels.lib.cache_clear()
    try:
        for test_file in ("models/layers/test_mamba_kernels.py", "models/test_selective_scan.py"):
            module = runpy.run_path(str(ROOT / "unit_tests" / test_file))  # what collection executes
            assert module["cpu_kernels"].can_build()
        assert not (tmp_path / "kernels").exists()  # before: collection built the library (~40 s per CPU kind)
    finally:
        cpu_kernels.lib.cache_clear()
