"""transformers-layout ViT / DINOv2 weights (Phikon, Phikon-v2) → timm, checked against a reference forward
written from transformers' ViTModel / Dinov2Model definitions (separate q/k/v, layer scale, final norm)."""
from __future__ import annotations

import functools

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from milkit.features.weights import hf_vit_to_timm, load_into

D, HEADS, LAYERS, PS, IMG = 32, 2, 2, 16, 32


def _hf_state_dict(dinov2: bool, grid: int = IMG // PS, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd = {"embeddings.cls_token": r(1, 1, D), "embeddings.position_embeddings": r(1, 1 + grid * grid, D),
          "embeddings.patch_embeddings.projection.weight": r(D, 3, PS, PS),
          "embeddings.patch_embeddings.projection.bias": r(D), "layernorm.weight": 1 + r(D), "layernorm.bias": r(D)}
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            sd[f"{p}attention.attention.{name}.weight"], sd[f"{p}attention.attention.{name}.bias"] = r(D, D), r(D)
        sd[f"{p}attention.output.dense.weight"], sd[f"{p}attention.output.dense.bias"] = r(D, D), r(D)
        n1, n2 = ("norm1", "norm2") if dinov2 else ("layernorm_before", "layernorm_after")
        for n in (n1, n2):
            sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"] = 1 + r(D), r(D)
        fc1, fc2 = ("mlp.fc1", "mlp.fc2") if dinov2 else ("intermediate.dense", "output.dense")
        sd[f"{p}{fc1}.weight"], sd[f"{p}{fc1}.bias"] = r(4 * D, D), r(4 * D)
        sd[f"{p}{fc2}.weight"], sd[f"{p}{fc2}.bias"] = r(D, 4 * D), r(D)
        if dinov2:
            sd[f"{p}layer_scale1.lambda1"], sd[f"{p}layer_scale2.lambda1"] = 1 + r(D), 1 + r(D)
    if dinov2:
        sd["embeddings.mask_token"] = r(1, D)
    else:
        sd["pooler.dense.weight"], sd["pooler.dense.bias"] = r(D, D), r(D)
    return {prefix + k: v for k, v in sd.items()}


def _reference(sd: dict[str, torch.Tensor], x: torch.Tensor, dinov2: bool) -> torch.Tensor:
    eps = 1e-6 if dinov2 else 1e-12
    ln = lambda t, n: F.layer_norm(t, (D,), sd[f"{n}.weight"], sd[f"{n}.bias"], eps)  # noqa: E731
    lin = lambda t, n: F.linear(t, sd[f"{n}.weight"], sd[f"{n}.bias"])  # noqa: E731
    t = F.conv2d(x, sd["embeddings.patch_embeddings.projection.weight"],
                 sd["embeddings.patch_embeddings.projection.bias"], stride=PS).flatten(2).transpose(1, 2)
    t = torch.cat([sd["embeddings.cls_token"].expand(len(x), -1, -1), t], 1) + sd["embeddings.position_embeddings"]
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        h = ln(t, p + ("norm1" if dinov2 else "layernorm_before"))
        q, k, v = (lin(h, f"{p}attention.attention.{n}").view(len(x), -1, HEADS, D // HEADS).transpose(1, 2)
                   for n in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / (D // HEADS) ** 0.5, -1) @ v
        a = lin(att.transpose(1, 2).reshape(len(x), -1, D), f"{p}attention.output.dense")
        t = t + (a * sd[f"{p}layer_scale1.lambda1"] if dinov2 else a)
        h = ln(t, p + ("norm2" if dinov2 else "layernorm_after"))
        fc1, fc2 = ("mlp.fc1", "mlp.fc2") if dinov2 else ("intermediate.dense", "output.dense")
        m = lin(F.gelu(lin(h, p + fc1)), p + fc2)
        t = t + (m * sd[f"{p}layer_scale2.lambda1"] if dinov2 else m)
    return ln(t, "layernorm")[:, 0]


@pytest.mark.parametrize("dinov2, prefix", [(False, ""), (False, "vit."), (True, ""), (True, "dinov2.")])
def test_hf_layout_matches_reference(dinov2, prefix):
    sd = _hf_state_dict(dinov2, prefix=prefix)
    kw = {"init_values": 1e-5} if dinov2 else {"norm_layer": functools.partial(nn.LayerNorm, eps=1e-12)}
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=IMG, embed_dim=D, depth=LAYERS,
                              num_heads=HEADS, num_classes=0, **kw).eval()
    load_into(model, hf_vit_to_timm(sd), "test")
    x = torch.randn(2, 3, IMG, IMG)
    with torch.inference_mode():
        want = _reference({k.removeprefix(prefix): v for k, v in sd.items()}, x, dinov2)
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


def test_position_embeddings_of_another_grid_are_resampled():
    sd = hf_vit_to_timm(_hf_state_dict(True, grid=3))  # e.g. weights trained at another image size
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=IMG, embed_dim=D, depth=LAYERS,
                              num_heads=HEADS, num_classes=0, init_values=1e-5)
    load_into(model, sd, "test")
    assert model.pos_embed.shape == (1, 5, D)
    torch.testing.assert_close(model.pos_embed[0, 0], sd["pos_embed"][0, 0])  # class token kept as is
