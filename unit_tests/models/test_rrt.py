"""R²T-MIL models: parameter parity with the official model, shapes, masks, gradients, the plug-in over every
registered aggregator that accepts embeddings, and the Hydra configs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from milkit.cli import CONF_DIR
from milkit.errors import ConfigError
from milkit.models import create_model, list_models, model_info
from milkit.models.layers.rrt import RRTEncoder
from milkit.models.rrt import accepts_reembed

IN_DIM = 24
CONF = Path(CONF_DIR)


def tiny(name: str = "rrt_abmil", num_classes: int = 2, **kw):
    return create_model(name, IN_DIM, num_classes, **{**model_info(name)["tiny_kwargs"], **kw})


def padded(lengths: list[int], d: int = IN_DIM, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), d, generator=g)
    return x, torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]


def test_parameter_count_equals_the_official_model() -> None:
    """R²T-MIL, 1024-d input, 2 classes; arithmetic from the research note §2.2 (upstream RRTMIL: 2,697,474)."""
    c, ln, qkv, proj = 512, 2 * 512, 512 * 3 * 512 + 3 * 512, 512 * 512 + 512
    rmsa = ln + qkv + proj + (8 * 15 + 8)  # EPEG: depthwise Conv2d(8, 8, (15, 1)) with bias
    crmsa = ln + qkv + proj + c * 3  # Φ ∈ R^{512×3}
    encoder = rmsa + crmsa + ln
    total = (1024 * c + c) + encoder + (c * 128 + 128) + (c * 2 + 2)  # projection, encoder, ABMIL w/o bias, head
    assert (encoder, total) == (2_105_984, 2_697_474)
    model = create_model("rrt_abmil", 1024, 2)
    assert sum(p.numel() for p in model.reembed.parameters()) == encoder
    assert sum(p.numel() for p in model.parameters()) == total


def test_rrt_abmil_has_the_paper_defaults() -> None:
    model = create_model("rrt_abmil", 1024, 2)
    enc = model.reembed
    assert isinstance(enc, RRTEncoder) and enc.dim == 512 and model.embed_dim == 512
    assert enc.geometry == (8, None) and enc.cr_geometry == (8, None) and len(enc.layers) == 1
    attn = enc.layers[0].fn.attn
    assert attn.num_heads == 8 and attn.pe.kernel_size == 15 and attn.proj_drop.p == 0.1
    assert enc.cr_msa.fn.k == 3 and enc.cr_msa.fn.attn.pe is None and not enc.all_shortcut
    scorer = model.pool.scorer
    assert scorer.V[0].bias is None and isinstance(scorer.V[1], torch.nn.Tanh) and scorer.U is None
    assert [type(m).__name__ for m in model.embed] == ["Linear", "ReLU", "Dropout"] and model.embed[2].p == 0.25
    assert not model_info("rrt_abmil")["permutation_invariant"] and not model_info("rrt")["permutation_invariant"]


@pytest.mark.parametrize("n", [1, 7, 64, 1000, 5000])
def test_shapes(n: int) -> None:
    model = tiny(num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, n, IN_DIM))
    assert out.logits.shape == (1, 3) and out.instance_scores.shape == (1, n)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.instance_scores).all()


@pytest.mark.parametrize("kw", [{}, {"region_size": 2, "crmsa_region_num": None}, {"crmsa_mlp": True}])
def test_padding_invariance_and_masked_positions(kw: dict) -> None:
    model = tiny(**kw).eval()
    lengths = [64, 7, 1, 30]
    x, mask = padded(lengths)
    x2 = torch.where(mask.unsqueeze(-1), x, 1e3 * torch.randn_like(x))
    with torch.no_grad():
        out = model(x, mask)
        torch.testing.assert_close(model(x2, mask).logits, out.logits, atol=1e-5, rtol=1e-4)
        for b, n in enumerate(lengths):
            alone = model(x[b : b + 1, :n])
            torch.testing.assert_close(alone.logits[0], out.logits[b], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(alone.instance_scores[0], out.instance_scores[b, :n], atol=1e-5, rtol=1e-4)


def test_masked_instances_inside_a_bag_are_removed_instances() -> None:
    model = tiny().eval()
    x, _ = padded([40])
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, [0, 5, 17, 39]] = False
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask).logits, model(x[:, mask[0]]).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"crmsa_mlp": True, "all_shortcut": True, "num_rmsa_layers": 2},
                                {"region_size": 2}])
def test_gradients_reach_every_parameter(kw: dict) -> None:
    model = tiny(**kw).train()
    x, mask = padded([30, 11])
    torch.nn.functional.cross_entropy(model(x, mask).logits, torch.tensor([0, 1])).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and not (p.grad is not None and p.grad.abs().sum() > 0)]
    assert not missing, missing
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["reembed.layers.0.fn.attn.pe.bias"] + (["reembed.layers.1.fn.attn.pe.bias"] if "num_rmsa_layers" in kw else [])


def test_epeg_bias_is_inert() -> None:
    """Upstream's EPEG bias shifts all logits of a head equally: softmax removes it (hence frozen)."""
    model = tiny().eval()
    x, _ = padded([20])
    with torch.no_grad():
        before = model(x).logits
        model.reembed.layers[0].fn.attn.pe.bias.normal_()
        torch.testing.assert_close(model(x).logits, before)


# --- plug-in over every registered aggregator that accepts embeddings ---------------------------------------
def embedding_aggregators() -> list[str]:
    """Registered models whose template ``reembed`` hook is still the identity (derived, not hard-coded)."""
    return [n for n in list_models() if accepts_reembed(create_model(n, IN_DIM, 2, **model_info(n)["tiny_kwargs"]))]


def test_the_plug_in_covers_the_baselines() -> None:
    names = embedding_aggregators()
    assert {"abmil", "mean", "max"} <= set(names) and not {"rrt", "rrt_abmil"} & set(names)


@pytest.mark.parametrize("name", embedding_aggregators())
def test_rrt_plugs_into_every_aggregator(name: str) -> None:
    base = create_model(name, IN_DIM, 3, **model_info(name)["tiny_kwargs"])
    model = create_model("rrt", IN_DIM, 3, aggregator=name, aggregator_kwargs=model_info(name)["tiny_kwargs"],
                         num_heads=1, crmsa_heads=1, region_num=2, crmsa_region_num=2, epeg_k=3)
    assert type(model) is type(base) and isinstance(model.reembed, RRTEncoder)
    assert model.reembed.dim == base.embed_dim
    calls = []
    model.reembed.register_forward_hook(lambda *_: calls.append(1))
    x, mask = padded([13, 6])
    coords = torch.stack([torch.arange(13) % 4, torch.arange(13) // 4], -1).float().expand(2, -1, -1)
    y = torch.tensor([0, 2])
    out = model.train()(x, mask, coords)
    assert calls and out.logits.shape == (2, 3)
    loss = torch.nn.functional.cross_entropy(out.logits, y)
    for v in {**out.aux_losses, **model.target_losses(out, y)}.values():
        loss = loss + v
    loss.backward()
    missing = [n for n, p in model.reembed.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        batched = model(x, mask, coords).logits
        for b, n in enumerate([13, 6]):
            alone = model(x[b : b + 1, :n], None, coords[b : b + 1, :n]).logits[0]
            torch.testing.assert_close(alone, batched[b], atol=1e-5, rtol=1e-4)


def test_rrt_rejects_an_aggregator_that_already_re_embeds() -> None:
    with pytest.raises(ConfigError, match="aggregator 'rrt_abmil' already has a re-embedding module"):
        create_model("rrt", IN_DIM, 2, aggregator="rrt_abmil")


# --- Hydra configs -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the lead's conf/train.yaml with the keys the brief fixes, searching milkit's conf/."""
    root = tmp_path_factory.mktemp("conf")
    (root / "root.yaml").write_text(
        "defaults:\n  - model: rrt\n  - data: synthetic\n  - _self_\n  - experiment: null\n"
        f"hydra:\n  searchpath: ['file://{CONF}']\n"
        "data: {in_dim: 32, num_classes: 2}\nseed: 0\n"
        "optimizer: {_target_: torch.optim.SGD, _partial_: true, lr: 0.1}\nscheduler: null\n"
        "trainer: {max_epochs: 1}\ncv: {folds: 1}\n")
    return root


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("rrt*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_overlays_compose_and_build(root_config: Path, experiment: str) -> None:
    with initialize_config_dir(str(root_config), version_base="1.3"):
        cfg = compose("root", overrides=[f"experiment={experiment}"])
    assert cfg.seed == 2021 and cfg.trainer.max_epochs == 200 and cfg.cv.folds == 5
    model = instantiate(cfg.model)
    opt = instantiate(cfg.optimizer)(model.parameters())
    sched = instantiate(cfg.scheduler)(opt)
    assert opt.defaults["lr"] == 2e-4 and opt.defaults["weight_decay"] == 1e-5 and sched.T_max == 200
    assert isinstance(model.reembed, RRTEncoder)
    assert model(torch.randn(1, 9, cfg.data.in_dim)).logits.shape == (1, 2)


def test_rrt_config_swaps_the_aggregator(root_config: Path) -> None:
    with initialize_config_dir(str(root_config), version_base="1.3"):
        cfg = compose("root", overrides=["model.aggregator=mean", "+model.aggregator_kwargs.embed_dims=[64]"])
    model = instantiate(cfg.model)
    assert type(model).__name__ == "PoolingMIL" and model.reembed.dim == 64


def test_dataset_presets_set_the_official_values(root_config: Path) -> None:
    with initialize_config_dir(str(root_config), version_base="1.3"):
        cfg = compose("root", overrides=["experiment=rrt_abmil_nsclc_plip"])
    assert cfg.model.model_name == "rrt_abmil"
    assert (cfg.model.epeg_k, cfg.model.crmsa_k, cfg.model.crmsa_heads) == (13, 3, 1)
    assert cfg.model.all_shortcut and cfg.model.crmsa_mlp


@pytest.mark.parametrize("overlay, patience, min_epochs", [("rrt_abmil", 20, 70), ("rrt_abmil_nsclc_r50", 20, 70),
                                                           ("rrt_abmil_c16_r50", 30, 130), ("rrt_abmil_c16_plip", 30, 130)])
def test_recipe_early_stopping_composes_into_the_real_train_config(tmp_path, overlay, patience, min_epochs) -> None:
    from unit_tests.training.conftest import compose_cfg

    cfg = compose_cfg([f"experiment={overlay}", "data.in_dim=1024", "data.num_classes=2"], tmp_path)
    es = instantiate(cfg.callbacks.early_stopping)
    assert (es.monitor, es.mode, es.patience) == ("val/auroc", "max", patience)
    assert cfg.trainer.min_epochs == min_epochs and cfg.trainer.max_epochs == 200
    assert cfg.callbacks.model_checkpoint.monitor == "val/auroc"
