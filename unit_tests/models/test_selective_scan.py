"""milkit's selective scan against a plain float64 recurrence, and against mamba-ssm's kernels where present."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from milkit.errors import ConfigError
from milkit.models.layers import selective_scan as ss
from milkit.models.layers.selective_scan import mamba_ssm_available, selective_scan, selective_scan_loop

# (rtol, atol) of the outputs and gradients against the float64 recurrence; the inputs of the reference are
# the same (already rounded) values, so the error is the scan's own arithmetic.
TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1e-2)}
NO_CUDA = "needs a CUDA device"


def reference(u, delta, A, B, C, D, z, delta_bias):
    """The recurrence step by step in float64 (mamba-ssm's selective_scan_ref, iterating unbind-ed views)."""
    u, delta, A, B, C, D, z, delta_bias = (t.double() for t in (u, delta, A, B, C, D, z, delta_bias))
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for u_t, d_t, b_t, c_t in zip(u.unbind(2), delta.unbind(2), B.unbind(2), C.unbind(2)):
        h = torch.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * b_t[:, None, :]
        ys.append((h * c_t[:, None, :]).sum(-1))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def make_inputs(bsz, d, n, length, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    tensors = dict(u=r(bsz, d, length), delta=r(bsz, d, length) * 0.5, A=-torch.exp(r(d, n) * 0.5),
                   B=r(bsz, n, length), C=r(bsz, n, length), D=r(d), z=r(bsz, d, length),
                   delta_bias=r(d) * 0.5 - 1.0)
    return {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in tensors.items()}


def grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.autograd.grad(out, list(inputs.values()), g.to(out))


def assert_matches_reference(inputs, impl="ref"):
    dtype = inputs["u"].dtype
    rtol, atol = TOL[dtype]
    out = selective_scan(**inputs, delta_softplus=True, impl=impl)
    assert out.dtype == dtype
    ref = reference(**inputs)
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol * scale)
    for name, got, want in zip(inputs, grads(out, inputs), grads(ref, inputs)):
        torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol * want.abs().max().item(),
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.fixture(params=["default", "blocks", "segments"])
def plan(request, monkeypatch):
    """Blocking plans (state = 2·6·4 floats): the default; 7-step blocks scanned step by step;
    45-step blocks whose steps advance 4 segments at once."""
    if request.param == "blocks":
        monkeypatch.setitem(ss._BLOCK_ELEMS, "cpu", 7 * 2 * 6 * 4)
        monkeypatch.setitem(ss._STEP_ELEMS, "cpu", 1)
    elif request.param == "segments":
        monkeypatch.setitem(ss._BLOCK_ELEMS, "cpu", 45 * 2 * 6 * 4)
        monkeypatch.setitem(ss._STEP_ELEMS, "cpu", 4 * 2 * 6 * 4)
    return request.param


@pytest.mark.parametrize("length", [1, 2, 33, 300])
def test_matches_float64_recurrence_for_every_plan(plan, length):
    inputs = make_inputs(2, 6, 4, length, dtype=torch.float64)
    assert_matches_reference(inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_sequence_per_dtype(dtype):
    assert_matches_reference(make_inputs(1, 8, 4, 2048, dtype=dtype, seed=3))


def test_hand_written_backward_passes_gradcheck(monkeypatch):
    monkeypatch.setitem(ss._BLOCK_ELEMS, "cpu", 9 * 3 * 2)
    monkeypatch.setitem(ss._STEP_ELEMS, "cpu", 3 * 3 * 2)
    assert ss._plan(23, 3 * 2, torch.device("cpu")) == (9, 3)
    inputs = make_inputs(1, 3, 2, 23, dtype=torch.float64)
    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    fn = lambda *args: ss._SelectiveScan.apply(*args, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names])


def test_backward_memory_is_linear_in_length():
    """Nothing of size L·D·N is kept for backward (the loop baseline keeps several such tensors)."""
    bsz, d, n, length = 1, 16, 32, 512
    inputs = make_inputs(bsz, d, n, length)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(**inputs, delta_softplus=True)
    assert max(saved) < length * d * n / 8 and sum(saved) < length * d * n / 2
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_loop(**inputs, delta_softplus=True)
    assert sum(saved) > 2 * length * d * n


def test_loop_baseline_matches_reference():
    inputs = make_inputs(2, 5, 3, 40, dtype=torch.float64)
    torch.testing.assert_close(selective_scan_loop(**inputs, delta_softplus=True), reference(**inputs))


def test_optional_arguments_default_to_none():
    inputs = make_inputs(1, 4, 3, 10, dtype=torch.float64)
    core = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    torch.testing.assert_close(selective_scan(**core), selective_scan_loop(**core))


def test_autocast_does_not_lower_the_scan_precision():
    inputs = make_inputs(1, 8, 4, 64)
    want = selective_scan(**inputs, delta_softplus=True)
    want_grads = grads(want, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # backward inside too: autocast is thread-local
        got = selective_scan(**inputs, delta_softplus=True)
        got_grads = grads(got, inputs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_bad_arguments_are_clear_errors():
    inputs = make_inputs(1, 4, 3, 10)
    with pytest.raises(ConfigError, match="impl must be one of"):
        selective_scan(**inputs, impl="triton")
    with pytest.raises(ConfigError, match="B and C must be"):
        selective_scan(**{**inputs, "B": inputs["B"][..., :5]})
    with pytest.raises(ConfigError, match="A must be real"):
        selective_scan(**{**inputs, "A": inputs["A"][:2]})
    if not (torch.cuda.is_available() and mamba_ssm_available()):
        with pytest.raises(ConfigError, match="impl='cuda' needs CUDA tensors and mamba-ssm"):
            selective_scan(**inputs, impl="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ref_scan_on_cuda(dtype):
    assert_matches_reference(make_inputs(2, 64, 16, 2048, dtype=dtype, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.skipif(not mamba_ssm_available(), reason="mamba-ssm's CUDA kernels are not installed (pip install milkit[mamba])")
@pytest.mark.parametrize("length", [128, 2048])
def test_ref_scan_matches_mamba_ssm_kernels(length):
    inputs = make_inputs(2, 64, 16, length, device="cuda")
    fast = selective_scan(**inputs, delta_softplus=True, impl="cuda")
    ref = selective_scan(**inputs, delta_softplus=True, impl="ref")
    # mamba-ssm's own test tolerances for float32 (its backward uses atomic adds: not bit-reproducible)
    torch.testing.assert_close(fast, ref, rtol=6e-4, atol=2e-3)
    for got, want in zip(grads(ref, inputs), grads(fast, inputs)):
        torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3 * max(1.0, want.abs().max().item()))


# ---- milkit's C kernel on the CPU (impl="cpu") ----
from milkit.models.layers import cpu_kernels, scan_kernel  # noqa: E402

needs_kernel = pytest.mark.skipif(not cpu_kernels.can_build(), reason="no C compiler to build the CPU scan kernel")


@needs_kernel
@pytest.mark.parametrize("block", [64, 7])
@pytest.mark.parametrize("d, n, length", [(6, 4, 1), (6, 4, 2), (40, 16, 33), (17, 16, 300), (20, 5, 130)])
def test_cpu_kernel_matches_float64_recurrence(monkeypatch, block, d, n, length):
    """Partial channel tiles (d = 6, 17, 20, 40 with 16-channel tiles), the specialised N = 16 path and the
    generic one, checkpoint blocks of 64 and 7 steps (so states cross block boundaries)."""
    monkeypatch.setattr(scan_kernel, "_BLOCK", block)
    assert_matches_reference(make_inputs(2, d, n, length), impl="cpu")


@needs_kernel
def test_cpu_kernel_long_sequence_and_auto_dispatch():
    inputs = make_inputs(1, 24, 16, 2048, seed=3)
    assert_matches_reference(inputs, impl="cpu")
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True),  # auto → the kernel on the CPU
                               selective_scan(**inputs, delta_softplus=True, impl="cpu"), rtol=0, atol=0)


@needs_kernel
def test_cpu_kernel_threads_split_channels(monkeypatch):
    """Several channel ranges (one per thread), each with its own dB/dC, give the single-range result."""
    inputs = make_inputs(2, 40, 16, 50, seed=5)
    one = selective_scan(**inputs, delta_softplus=True, impl="cpu")
    g_one = grads(one, inputs)
    monkeypatch.setattr(cpu_kernels.torch, "get_num_threads", lambda: 3)
    assert cpu_kernels.ranges(40, 16) == [(0, 16), (16, 32), (32, 40)]
    three = selective_scan(**inputs, delta_softplus=True, impl="cpu")
    torch.testing.assert_close(three, one, rtol=0, atol=0)
    for a, b in zip(grads(three, inputs), g_one):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@needs_kernel
def test_cpu_kernel_optional_arguments_match_the_pytorch_scan():
    g = torch.Generator().manual_seed(7)
    u, delta = torch.randn(2, 20, 70, generator=g), torch.rand(2, 20, 70, generator=g) * 0.3
    A, B, C = -torch.rand(20, 16, generator=g) - 0.1, torch.randn(2, 16, 70, generator=g), torch.randn(2, 16, 70, generator=g)
    for t in (u, delta, A, B, C):
        t.requires_grad_()
    for kw in ({}, {"D": torch.ones(20)}, {"delta_bias": torch.full((20,), 0.1), "delta_softplus": True}):
        outs = [selective_scan(u, delta, A, B, C, impl=impl, **kw) for impl in ("ref", "cpu")]
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        gr = [torch.autograd.grad(o.square().sum(), (u, delta, A, B, C)) for o in outs]
        for a, b in zip(gr[1], gr[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_cpu_kernel_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("MILKIT_CPU_KERNELS", "0")
    cpu_kernels.lib.cache_clear()
    try:
        assert not scan_kernel.available()
        inputs = make_inputs(1, 4, 4, 9)
        with pytest.raises(ConfigError, match="impl='cpu'"):
            selective_scan(**inputs, impl="cpu")
        assert_matches_reference(inputs, impl="auto")  # falls back to the PyTorch scan
    finally:
        cpu_kernels.lib.cache_clear()
