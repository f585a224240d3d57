"""OWLoRA layers: adapter shapes, SVD truncation energy, orthogonality penalty, gradient projection, injection."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from milkit.models.layers.lora import (AdaptedLinear, LoRAAdapter, energy_rank, inject_adapters, orthonormal_basis,
                                       rank_for)


def _layer(in_f: int = 12, out_f: int = 10, seed: int = 0) -> AdaptedLinear:
    torch.manual_seed(seed)
    return AdaptedLinear(nn.Linear(in_f, out_f))


def test_adapter_shapes_and_zero_initial_update() -> None:
    layer = _layer()
    x = torch.randn(3, 5, 12)
    before = layer(x)
    adapter = layer.add_adapter(4)
    assert adapter.down.shape == (4, 12) and adapter.up.shape == (10, 4) and adapter.scale.shape == (4,)
    torch.testing.assert_close(layer(x), before)  # U = 0 at creation
    with torch.no_grad():
        adapter.up.normal_()
    expected = before + x @ adapter.delta_weight().T
    torch.testing.assert_close(layer(x), expected)


def test_add_adapter_freezes_earlier_adapters() -> None:
    layer = _layer()
    first = layer.add_adapter(3)
    second = layer.add_adapter(2)
    assert not any(p.requires_grad for p in first.parameters())
    assert all(p.requires_grad for p in second.parameters())
    assert layer.newest is second


def test_energy_rank_keeps_the_stated_energy() -> None:
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squared: 16, 4, 1, 1 of 22
    assert energy_rank(s, 16 / 22) == 1
    assert energy_rank(s, 0.8) == 2  # 20/22 = 0.909 >= 0.8 > 16/22
    assert energy_rank(s, 0.95) == 3  # 21/22 = 0.9545
    assert energy_rank(s, 0.99) == 4
    assert energy_rank(s, 0.0) == 1


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_svd_truncation_keeps_stated_energy_and_bases(energy: float) -> None:
    layer = _layer(16, 12)
    w0 = layer.weight.detach().clone()
    s0 = torch.linalg.svdvals(w0)
    d = layer.compress(energy)
    frac = (s0[:d] ** 2).sum() / (s0 ** 2).sum()
    assert frac >= energy - 1e-6
    assert d == 1 or (s0[: d - 1] ** 2).sum() / (s0 ** 2).sum() < energy  # smallest such d
    w = layer.weight.detach()
    assert torch.linalg.matrix_rank(w) == d
    torch.testing.assert_close((w ** 2).sum() / (w0 ** 2).sum(), frac, atol=1e-5, rtol=1e-5)
    # the bases reconstruct the truncated weight: W = U_d U_dᵀ W V_d V_dᵀ
    u, v = layer.basis_out, layer.basis_in
    assert u.shape == (12, d) and v.shape == (16, d)
    torch.testing.assert_close(u @ (u.T @ w @ v) @ v.T, w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v.T @ v, torch.eye(d), atol=1e-5, rtol=1e-5)


def test_orthogonality_penalty_value_on_constructed_matrices() -> None:
    layer = _layer(6, 5)
    adapter = layer.add_adapter(2)
    with torch.no_grad():
        adapter.down.zero_()
        adapter.down[0, 0], adapter.down[1, 1] = 1.0, 1.0  # D Dᵀ = I → 0
        adapter.up.zero_()
        adapter.up[0, 0], adapter.up[0, 1] = 1.0, 1.0  # Uᵀ U = [[1, 1], [1, 1]] → ‖·−I‖² = 2
    torch.testing.assert_close(layer.orthogonality_penalty(), torch.tensor(2.0 / 4))
    with torch.no_grad():
        adapter.down.mul_(2.0)  # D Dᵀ = 4 I → ‖·−I‖² = 9 + 9
    torch.testing.assert_close(layer.orthogonality_penalty(), torch.tensor((18.0 + 2.0) / 4))


def test_gradient_projection_removes_components_in_earlier_subspaces() -> None:
    layer = _layer(10, 8)
    layer.compress(0.5)
    first = layer.add_adapter(2)
    with torch.no_grad():
        first.up.normal_()
    new = layer.add_adapter(3)
    new.down.grad = torch.randn_like(new.down)
    new.up.grad = torch.randn_like(new.up)
    g_down, g_up = new.down.grad.clone(), new.up.grad.clone()
    layer.project_gradients()
    earlier_in = torch.cat([layer.basis_in, first.down.detach().T], dim=1)  # (in, k)
    earlier_out = torch.cat([layer.basis_out, first.up.detach()], dim=1)  # (out, k)
    assert (new.down.grad @ earlier_in).abs().max() < 1e-5
    assert (earlier_out.T @ new.up.grad).abs().max() < 1e-5
    # only the protected components were removed: the rest of the gradient is unchanged
    q_in, q_out = orthonormal_basis([earlier_in]), orthonormal_basis([earlier_out])
    torch.testing.assert_close(new.down.grad, g_down - g_down @ q_in @ q_in.T)
    torch.testing.assert_close(new.up.grad, g_up - q_out @ q_out.T @ g_up)
    assert new.down.grad.norm() > 0.1 and new.up.grad.norm() > 0.1


def test_inject_adapters_wraps_linears_but_not_heads_or_scalar_outputs() -> None:
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1)))
    model.add_module("head", nn.Linear(6, 2))
    x = torch.randn(3, 4)
    ref = model.body[0](x)
    layers = inject_adapters(model)
    assert list(layers) == ["body.0"]
    assert isinstance(model.body[0], AdaptedLinear) and isinstance(model.body[2], nn.Linear)
    assert isinstance(model.head, nn.Linear)
    torch.testing.assert_close(model.body[0](x), ref)
    assert "body.0.weight" in model.state_dict()  # parameter names are kept
    assert inject_adapters(model) == layers  # idempotent


def test_rank_overrides_first_match_wins() -> None:
    over = {"*qkv": 48, "*attn*": 8}
    assert rank_for("reembed.blocks.0.attn.qkv", 16, over) == 48
    assert rank_for("reembed.blocks.0.attn.proj", 16, over) == 8
    assert rank_for("embed.0", 16, over) == 16
    assert isinstance(LoRAAdapter(3, 2, 1), nn.Module)
