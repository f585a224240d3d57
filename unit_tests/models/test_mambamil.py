"""MambaMIL and its blocks: mamba_ssm compatibility, reordering, initialisation, parameter count, learning."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from milkit.errors import ConfigError
from milkit.models import create_model
from milkit.models.layers.causal_conv import causal_depthwise_conv1d
from milkit.models.layers.mamba import DualMamba, Mamba
from milkit.models.mambamil import MambaMIL, convert_upstream_state_dict, flip_order, invert_order, sr_order

from unit_tests.models.test_selective_scan import reference
from unit_tests.training.conftest import compose_cfg

# mamba_ssm.Mamba(d_model=512) (d_state 16, d_conv 4, expand 2 → d_inner 1024, dt_rank 32): state-dict keys
# and shapes, as mamba_ssm 1.x/2.x (modules/mamba_simple.py) registers them.
MAMBA_SSM_512 = {
    "A_log": (1024, 16), "D": (1024,), "in_proj.weight": (2048, 512), "conv1d.weight": (1024, 1, 4),
    "conv1d.bias": (1024,), "x_proj.weight": (64, 1024), "dt_proj.weight": (1024, 32), "dt_proj.bias": (1024,),
    "out_proj.weight": (512, 1024),
}
# MambaMIL's SRMamba / BiMamba add one copy of the per-branch parameters.
SECOND_BRANCH = {"conv1d_b.weight": (1024, 1, 4), "conv1d_b.bias": (1024,), "x_proj_b.weight": (64, 1024),
                 "dt_proj_b.weight": (1024, 32), "dt_proj_b.bias": (1024,), "A_b_log": (1024, 16), "D_b": (1024,)}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_state_dict_matches_mamba_ssm_both_ways():
    block = Mamba(512)
    assert shapes(block) == MAMBA_SSM_512
    assert list(block.state_dict()) == list(MAMBA_SSM_512)  # same registration order as mamba_ssm
    foreign = {k: torch.randn(s) for k, s in MAMBA_SSM_512.items()}  # a checkpoint written by mamba_ssm
    block.load_state_dict(foreign, strict=True)
    assert all(torch.equal(block.state_dict()[k], v) for k, v in foreign.items())
    assert shapes(DualMamba(512)) == {**MAMBA_SSM_512, **SECOND_BRANCH}


def test_mamba_initialisation():
    torch.manual_seed(0)
    block = DualMamba(64, d_state=8, dt_min=0.002, dt_max=0.05)
    for a_log, dt_proj in ((block.A_log, block.dt_proj), (block.A_b_log, block.dt_proj_b)):
        torch.testing.assert_close(-torch.exp(a_log), -torch.arange(1.0, 9.0).expand(128, 8))  # S4D-real
        dt = F.softplus(dt_proj.bias)
        assert dt.min() >= 0.002 * 0.999 and dt.max() <= 0.05 * 1.001 and dt.std() > 0
        assert dt_proj.weight.abs().max() <= block.dt_rank**-0.5
    torch.testing.assert_close(block.dt_proj.bias, block.dt_proj_b.bias)  # one sample, as MambaMIL's mixers
    assert torch.equal(block.D, torch.ones(128)) and block.D._no_weight_decay and block.A_log._no_weight_decay


@pytest.mark.parametrize("length", [1, 2, 11, 600])
@pytest.mark.parametrize("silu", [False, True])
def test_causal_conv_equals_conv1d(length, silu):
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3).double()
    x = torch.randn(2, length, 6, dtype=torch.float64, requires_grad=True)
    got = causal_depthwise_conv1d(x, conv.weight, conv.bias, silu=silu)
    want = conv(x.mT)[..., :length].mT
    want = F.silu(want) if silu else want
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    params = (x, conv.weight, conv.bias)
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)


def test_mamba_block_equals_its_definition():
    """The block against a float64 re-derivation: Conv1d, SiLU, x_proj split [dt|B|C], scan, gate, out_proj."""
    torch.manual_seed(1)
    block = Mamba(16, d_state=4).double()
    h = torch.randn(2, 9, 16, dtype=torch.float64)
    x, z = block.in_proj(h).chunk(2, dim=-1)
    x = F.silu(block.conv1d(x.mT)[..., :9])  # (B, d_inner, L)
    dt, B, C = block.x_proj(x.mT).split([block.dt_rank, 4, 4], dim=-1)
    y = reference(x, (dt @ block.dt_proj.weight.T).mT, -torch.exp(block.A_log), B.mT, C.mT, block.D, z.mT,
                  block.dt_proj.bias)
    torch.testing.assert_close(block(h), block.out_proj(y.mT))


def scan_branch(block, x, conv, x_proj, dt_proj, A_log, D):
    """One branch from PyTorch ops only: conv (torch path) → SiLU → x_proj → scan (no gate)."""
    u = causal_depthwise_conv1d(x, conv.weight, conv.bias, silu=True, impl="torch")
    return block.ssm(u, x_proj, dt_proj, A_log, D)


def test_dual_mamba_with_identity_order_is_two_forward_branches():
    torch.manual_seed(2)
    block = DualMamba(16, d_state=4)
    with torch.no_grad():
        for p, q in [(block.conv1d_b, block.conv1d), (block.x_proj_b, block.x_proj), (block.dt_proj_b, block.dt_proj)]:
            p.load_state_dict(q.state_dict())
        block.A_b_log.copy_(block.A_log)
        block.D_b.copy_(block.D)
    h = torch.randn(1, 10, 16)
    ident = torch.arange(10).unsqueeze(0)
    x, z = block.in_proj(h).chunk(2, dim=-1)
    y = scan_branch(block, x, block.conv1d, block.x_proj, block.dt_proj, block.A_log, block.D)
    torch.testing.assert_close(block(h, ident), block.out_proj(2 * y * F.silu(z)))
    with pytest.raises(ValueError, match="needs the token order"):
        block(h)


def test_sr_mixer_in_the_model_is_upstreams_reorder_scan_restore():
    """Upstream SRMamba for N % R == 0: scan x, and scan ``rearrange(x, "b (k w) d -> b (w k) d")`` then put it
    back with the inverse rearrangement; both branches summed, gated, projected. The model's own token order
    must wire exactly that (the inverse order in its place gives another result)."""
    torch.manual_seed(3)
    model = MambaMIL(8, 2, mixer="sr", embed_dim=16, d_state=4, rate=3)
    block = model.layers[0][1]
    h = torch.randn(2, 12, 16)
    mask = torch.ones(2, 12, dtype=torch.bool)
    k, r = 12 // 3, 3
    fwd = lambda t: t.view(2, k, r, -1).transpose(1, 2).reshape(2, 12, -1)  # noqa: E731  b (k w) d -> b (w k) d
    back = lambda t: t.view(2, r, k, -1).transpose(1, 2).reshape(2, 12, -1)  # noqa: E731  b (w k) d -> b (k w) d
    x, z = block.in_proj(h).chunk(2, dim=-1)
    y_f = scan_branch(block, x, block.conv1d, block.x_proj, block.dt_proj, block.A_log, block.D)
    y_r = scan_branch(block, fwd(x), block.conv1d_b, block.x_proj_b, block.dt_proj_b, block.A_b_log, block.D_b)
    want = block.out_proj((y_f + back(y_r)) * F.silu(z))
    order = model.token_order(mask)
    torch.testing.assert_close(block(h, order), want)
    assert not torch.allclose(block(h, invert_order(order)), want)


def upstream_order(length: int, rate: int) -> list[int]:
    """MambaMIL's reordering: zero-pad to K·R, "b (k w) d -> b (w k) d", then drop the pads (-1)."""
    k = math.ceil(length / rate)
    idx = torch.arange(k * rate)
    idx[length:] = -1
    order = idx.view(k, rate).T.flatten()
    return order[order >= 0].tolist()


def test_sr_order_worked_example():
    # upstream, 1-based with 0 = pad: [1,6,11, 2,7,12, 3,8,0, 4,9,0, 5,10,0]
    assert (sr_order(torch.tensor([12]), 12, 5)[0] + 1).tolist() == [1, 6, 11, 2, 7, 12, 3, 8, 4, 9, 5, 10]


@pytest.mark.parametrize("rate", range(1, 13))
def test_reorder_then_inverse_is_identity_for_all_lengths(rate):
    lengths = torch.arange(1, 41)
    n = 45
    order = sr_order(lengths, n, rate)
    inverse = invert_order(order)
    tokens = torch.arange(n).expand(len(lengths), n)
    assert torch.equal(torch.gather(torch.gather(tokens, 1, order), 1, inverse), tokens)
    assert torch.equal(torch.gather(torch.gather(tokens, 1, inverse), 1, order), tokens)
    for i, length in enumerate(lengths.tolist()):
        assert order[i, :length].tolist() == upstream_order(length, rate)
        assert order[i, length:].tolist() == list(range(length, n))  # padding stays put, after the bag
    if rate == 1:
        assert torch.equal(order, tokens)


def test_flip_order_reverses_each_bag_only():
    order = flip_order(torch.tensor([3, 5, 1]), 5)
    assert order.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]
    assert torch.equal(invert_order(order), order)


def expected_parameters(in_dim: int, num_classes: int, branches: int) -> int:
    """Research note §1.2: Linear(in,512), 2 × [LN(512), Mamba(512, 16, 4, 2)], LN, attention, head."""
    d, di, n, r = 512, 1024, 16, 32
    branch = (di * 4 + di) + di * (r + 2 * n) + (r * di + di) + di * n + di  # conv, x_proj, dt_proj, A_log, D
    layer = 2 * d + d * 2 * di + branches * branch + di * d  # LN, in_proj, branches, out_proj
    attention = d * 128 + 128 + 128 + 1
    return in_dim * d + d + 2 * layer + 2 * d + attention + d * num_classes + num_classes


@pytest.mark.parametrize("name, branches, official", [("mambamil", 2, 4_227_843), ("mambamil_bi", 2, 4_227_843),
                                                      ("mambamil_plain", 1, 3_984_131)])
def test_parameter_count_equals_official_model(name, branches, official):
    model = create_model(name, in_dim=1024, num_classes=2)
    assert expected_parameters(1024, 2, branches) == official
    assert sum(p.numel() for p in model.parameters()) == official


def upstream_keys(in_dim: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official model (models/MambaMIL.py: _fc1, layers[i] = [LayerNorm, SRMamba],
    norm, attention = [Linear, Tanh, Linear], classifier), for 512-d layers."""
    keys = {"_fc1.0.weight": (512, in_dim), "_fc1.0.bias": (512,), "norm.weight": (512,), "norm.bias": (512,),
            "classifier.weight": (num_classes, 512), "classifier.bias": (num_classes,),
            "attention.0.weight": (128, 512), "attention.0.bias": (128,), "attention.2.weight": (1, 128),
            "attention.2.bias": (1,)}
    for i in range(2):
        keys |= {f"layers.{i}.0.weight": (512,), f"layers.{i}.0.bias": (512,)}
        keys |= {f"layers.{i}.1.{k}": s for k, s in {**MAMBA_SSM_512, **SECOND_BRANCH}.items()}
    return keys


def test_official_checkpoint_loads_after_renaming():
    official = {k: torch.randn(s) for k, s in upstream_keys(1024, 2).items()}
    model = create_model("mambamil", in_dim=1024, num_classes=2)
    model.load_state_dict(convert_upstream_state_dict(official), strict=True)
    torch.testing.assert_close(model.pool.scorer.w.weight, official["attention.2.weight"])
    torch.testing.assert_close(model.layers[1][1].A_b_log, official["layers.1.1.A_b_log"])


def test_init_modes():
    torch.manual_seed(0)
    ours = create_model("mambamil", in_dim=32, num_classes=2, embed_dim=32)
    upstream = create_model("mambamil", in_dim=32, num_classes=2, embed_dim=32, init="upstream")
    mixer, up_mixer = ours.layers[0][1], upstream.layers[0][1]
    assert F.softplus(mixer.dt_proj.bias).max() <= 0.1 * 1.001  # Mamba's Δ range
    assert torch.equal(up_mixer.dt_proj.bias, torch.zeros(64)) and torch.equal(up_mixer.dt_proj_b.bias, torch.zeros(64))
    for model in (ours, upstream):
        assert torch.equal(model.head.bias, torch.zeros(2)) and torch.equal(model.embed[0].bias, torch.zeros(32))
    # xavier_normal_ std = sqrt(2 / (fan_in + fan_out)) only where upstream re-initialises the mixer
    std = lambda w: w.std().item() / math.sqrt(2 / sum(w.shape))  # noqa: E731
    assert 0.9 < std(up_mixer.x_proj.weight) < 1.1
    assert std(mixer.x_proj.weight) < 0.8  # nn.Linear's default init


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ConfigError, match="mixer must be one of"):
        MambaMIL(8, 2, mixer="gru")
    with pytest.raises(ConfigError, match="rate must be >= 1"):
        create_model("mambamil", in_dim=8, num_classes=2, rate=0)


@pytest.mark.parametrize("name", ["mambamil", "mambamil_bi", "mambamil_plain"])
def test_model_configs_build_the_official_model(name, tmp_path):
    cfg = compose_cfg([f"model={name}", "data.in_dim=1024", "data.num_classes=2"], tmp_path)
    model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == (3_984_131 if name == "mambamil_plain" else 4_227_843)


def test_paper_experiment_overlay(tmp_path):
    cfg = compose_cfg(["experiment=mambamil_paper", "data.in_dim=1024", "data.num_classes=2"], tmp_path)
    assert cfg.model.model_name == "mambamil" and cfg.model.rate == 5 and cfg.model.dropout == 0.0
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 2e-4 and cfg.optimizer.weight_decay == 1e-5
    assert cfg.scheduler is None and cfg.trainer.max_epochs == 200 and cfg.trainer.min_epochs == 50
    assert cfg.monitor == "val/loss" and cfg.monitor_mode == "min" and cfg.callbacks.early_stopping.patience == 20
    assert cfg.seed == 1 and cfg.cv.folds == 10 and cfg.data.batch_size == 1
    assert sum(p.numel() for p in instantiate(cfg.model).parameters()) == 4_227_843


def synthetic_bags(n_bags: int, seed: int, d: int = 4):
    """Positive bags hide 1–3 instances shifted by +5 along feature 0 among 10–30 Gaussian instances."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 31, (n_bags,), generator=g)
    x = torch.randn(n_bags, 30, d, generator=g)
    y = torch.arange(n_bags) % 2
    for i in range(n_bags):
        if y[i]:
            k = int(torch.randint(1, 4, (1,), generator=g))
            x[i, torch.randperm(int(lengths[i]), generator=g)[:k], 0] += 5.0
    mask = torch.arange(30) < lengths[:, None]
    return x, mask, y


def test_short_training_run_learns_a_synthetic_task():
    torch.manual_seed(0)
    model = create_model("mambamil", in_dim=4, num_classes=2, embed_dim=16, d_state=4, attn_dim=8, rate=5)
    x, mask, y = synthetic_bags(256, seed=0)
    xt, mt, yt = synthetic_bags(128, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for epoch in range(6):
        model.train()
        for idx in torch.randperm(len(y)).split(16):  # padded batches of 16 bags
            loss = F.cross_entropy(model(x[idx], mask[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt, mt).logits.argmax(-1) == yt).float().mean().item()
    assert acc >= 0.9, f"held-out accuracy {acc:.2f}"
