"""milkit's C kernels of a Mamba mixer (conv + SiLU, gate, scan output order) against their PyTorch paths.

Each kernel runs in float32 and is compared with the float64 PyTorch path (values and every gradient), on shapes
with partial 16-channel tiles, padded batches of two bags, strided inputs (chunks of ``in_proj``'s output) and
permuted token orders. The whole blocks are compared too, and the portable (non-AVX-512) build.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from milkit.errors import ConfigError
from milkit.models.layers import cpu_kernels
from milkit.models.layers.causal_conv import causal_conv_branches, causal_depthwise_conv1d, permute_tokens
from milkit.models.layers.gate import gated_sum
from milkit.models.layers.mamba import DualMamba, Mamba
from milkit.models.layers.selective_scan import selective_scan
from milkit.models.mambamil import invert_order, sr_order

pytestmark = pytest.mark.skipif(not cpu_kernels.can_build(), reason="no C compiler to build milkit's CPU kernels")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def perms(bsz, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(length, generator=g) for _ in range(bsz)])


def run_both(fn, inputs, seed=9):
    """``fn(impl, *tensors)`` in float64 on the PyTorch path and in float32 on the kernel: outputs, gradients."""
    res = []
    for impl, dtype in (("torch", torch.float64), ("cpu", torch.float32)):
        ins = [t.to(dtype).requires_grad_() for t in inputs]
        out = fn(impl, *ins)
        outs = out if isinstance(out, (list, tuple)) else [out]
        grads = torch.autograd.grad(outs, ins, [rand(*o.shape, seed=seed + i).to(dtype) for i, o in enumerate(outs)])
        res.append([*outs, *grads])
    return res


def assert_close_all(res, tol=2e-5):
    for want, got in zip(*res):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("length", [1, 2, 11, 300])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("ordered", [False, True])
def test_conv_kernel_matches_the_pytorch_path(length, silu, ordered):
    c = 40  # tiles of 16, 16, 8 channels
    order = perms(2, length) if ordered else None

    def conv(impl, xz, w, b):
        return causal_depthwise_conv1d(xz[..., :c], w, b, silu=silu, order=order, impl=impl)  # strided rows

    res = run_both(conv, [rand(2, length, 2 * c), rand(c, 1, 4, seed=1), rand(c, seed=2)])
    assert_close_all(res)
    if ordered:  # the order reads the tokens permuted: the same as permuting first
        x, w, b = rand(2, length, c), rand(c, 1, 4, seed=1), rand(c, seed=2)
        torch.testing.assert_close(causal_depthwise_conv1d(x, w, b, silu, order, impl="torch"),
                                   causal_depthwise_conv1d(permute_tokens(x, order), w, b, silu, impl="torch"))


def test_conv_branches_share_one_gradient_of_x():
    """Two branches (the second reading the tokens permuted, without bias) in one op: gradients of x summed."""
    order = perms(2, 37, seed=3)

    def two(impl, x, w1, b1, w2):
        return causal_conv_branches(x, [(w1, b1, None), (w2, None, order)], silu=True, impl=impl)

    assert_close_all(run_both(two, [rand(2, 37, 20), rand(20, 1, 4, seed=1), rand(20, seed=2), rand(20, 1, 4, seed=4)]))


def test_gate_kernel_matches_the_pytorch_path():
    def gate(impl, y, xz, y_r):  # z: the strided second half of in_proj's output
        return gated_sum(y, xz[..., 24:], y_r, impl=impl), gated_sum(y, xz[..., 24:], impl=impl)

    assert_close_all(run_both(gate, [rand(2, 33, 24), rand(2, 33, 48, seed=1) * 3, rand(2, 33, 24, seed=2)]))


def test_scan_out_order_puts_steps_back_in_token_order():
    """``out_order``: the CPU kernel writes step t at position order[t]; the PyTorch scan scatters; both equal
    the plain scan followed by the inverse permutation, with gradients."""
    bsz, d, n, length = 2, 20, 16, 45
    order = torch.stack([sr_order(torch.tensor([length]), length, 4)[0], perms(1, length)[0]])
    inverse = invert_order(order)
    a = -torch.exp(rand(d, n, seed=5) * 0.5)

    def scan(impl, u, delta, b, c):
        return selective_scan(u, delta, a.to(u), b, c, torch.ones(d, dtype=u.dtype), delta_bias=None,
                              delta_softplus=True, impl="ref" if impl == "torch" else "cpu", out_order=order)

    inputs = [rand(bsz, d, length), rand(bsz, d, length, seed=1) * 0.5, rand(bsz, n, length, seed=2),
              rand(bsz, n, length, seed=3)]
    res = run_both(scan, inputs)
    assert_close_all(res)
    plain = selective_scan(*inputs[:2], a, *inputs[2:], torch.ones(d, dtype=torch.float64), delta_softplus=True,
                           impl="ref")
    torch.testing.assert_close(res[0][0], torch.gather(plain, 2, inverse[:, None, :].expand_as(plain)))


@pytest.mark.parametrize("a_values, dt_range", [((-1e-3, -1.0, -80.0, -3000.0), (0.05, 2.0)),  # dt·A to -6000
                                                 ((-1e-3, -0.5, -1.0, -2.0), (-0.5, 0.5))])  # dt·A up to +1
def test_scan_kernel_handles_extreme_decays(a_values, dt_range):
    """dt·A far below the float32 exponent range decays to 0; positive arguments (no softplus, negative dt)
    grow as exp says; both as the float64 PyTorch scan, gradients included."""
    d, n, length = 16, 4, 12
    a = torch.tensor(a_values, dtype=torch.float64).repeat(d, 1)

    def scan(impl, u, delta):
        ones = torch.ones(1, n, length, dtype=u.dtype)
        return selective_scan(u, delta, a.to(u), ones, ones, delta_softplus=False,
                              impl="ref" if impl == "torch" else "cpu")

    delta = torch.linspace(*dt_range, length, dtype=torch.float64).expand(1, d, length).contiguous()
    res = run_both(scan, [rand(1, d, length), delta])
    assert_close_all(res, tol=1e-4)
    assert all(torch.isfinite(t).all() for t in res[1])


@pytest.mark.parametrize("block_cls", [Mamba, DualMamba])
def test_mamba_blocks_on_the_kernels_match_float64(block_cls):
    """A whole block in float32 (conv, scan and gate on the C kernels) vs its float64 copy (PyTorch paths): output
    and the gradient of every parameter and of the input, on a padded-length batch of two bags."""
    torch.manual_seed(4)
    block = block_cls(24, d_state=16)
    ref = block_cls(24, d_state=16).double()
    ref.load_state_dict(block.state_dict())
    h = rand(2, 50, 24)
    order = sr_order(torch.tensor([50, 43]), 50, 5)
    outs = []
    for m, x in ((ref, h.clone()), (block, h.float())):
        x.requires_grad_()
        out = m(x) if block_cls is Mamba else m(x, order)
        grads = torch.autograd.grad(out, [x, *m.parameters()], rand(*out.shape, seed=7).to(out))
        outs.append([out, *grads])
    assert_close_all(outs, tol=1e-4)


def test_portable_build_matches_the_pytorch_path(tmp_path):
    """The kernels compiled without AVX-512 (the portable exp2 path) in a fresh process and kernel cache."""
    script = textwrap.dedent("""
        import torch
        from milkit.models.layers import cpu_kernels
        from milkit.models.layers.causal_conv import causal_depthwise_conv1d
        from milkit.models.layers.selective_scan import selective_scan
        assert cpu_kernels.available()
        g = torch.Generator().manual_seed(0)
        u, delta = torch.randn(2, 20, 70, generator=g), torch.randn(2, 20, 70, generator=g) * 0.5
        A, B, C = -torch.rand(20, 16, generator=g) - 0.1, torch.randn(2, 16, 70, generator=g), torch.randn(2, 16, 70, generator=g)
        kw = dict(D=torch.ones(20), delta_bias=torch.full((20,), -1.0), delta_softplus=True)
        torch.testing.assert_close(selective_scan(u, delta, A, B, C, impl="cpu", **kw),
                                   selective_scan(u, delta, A, B, C, impl="ref", **kw), rtol=1e-5, atol=1e-5)
        x, w, b = torch.randn(2, 30, 20, generator=g), torch.randn(20, 1, 4, generator=g), torch.randn(20, generator=g)
        torch.testing.assert_close(causal_depthwise_conv1d(x, w, b, True, impl="cpu"),
                                   causal_depthwise_conv1d(x, w, b, True, impl="torch"), rtol=1e-5, atol=1e-5)
        print("portable ok")
    """)
    env = {**os.environ, "MILKIT_CACHE": str(tmp_path), "MILKIT_KERNEL_CFLAGS": "-mno-avx512f"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "portable ok" in proc.stdout
    assert len(list((tmp_path / "kernels").glob("milkit_cpu_*.so"))) == 1


@pytest.mark.parametrize("thp", ["1", "0"])
def test_kernel_outputs_are_ordinary_tensors(monkeypatch, thp):
    """``empty`` (huge-page advice on large outputs, or none with MILKIT_THP=0) gives plain, writable tensors."""
    monkeypatch.setenv("MILKIT_THP", thp)
    cpu_kernels._madvise.cache_clear()
    try:
        like = torch.zeros(1)
        for shape in [(3, 5), (2, 1024, 1024)]:  # below and above the 4 MiB threshold
            t = cpu_kernels.empty(*shape, like=like)
            assert t.shape == shape and t.dtype == torch.float32 and t.is_contiguous()
            t.fill_(2.5)
            assert t.sum().item() == pytest.approx(2.5 * t.numel())
    finally:
        cpu_kernels._madvise.cache_clear()


def test_forcing_the_kernel_where_it_cannot_run_is_a_clear_error():
    x, w = rand(1, 5, 4), rand(4, 1, 4, seed=1)  # float64: the kernels are float32-only
    with pytest.raises(ConfigError, match="impl='cpu' needs float32 CPU tensors"):
        causal_depthwise_conv1d(x, w, impl="cpu")
    with pytest.raises(ConfigError, match="impl='cpu' needs float32 CPU tensors"):
        gated_sum(x, x, impl="cpu")
    with pytest.raises(ConfigError, match="impl must be"):
        gated_sum(x.float(), x.float(), impl="fast")


def test_loading_the_kernels_leaves_denormals_alone():
    """-ffast-math would link crtfastmath.o, whose constructor turns on flush-to-zero for the whole process."""
    assert cpu_kernels.lib() is not None
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal number
    assert (tiny * 1.0).item() > 0
