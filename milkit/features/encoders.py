"""Patch encoders on timm: a registry of specs (architecture kwargs, input size, mean/std, output dim,
preferred precision, weight source) and ``PatchEncoder``, which takes uint8 tiles on the device.

Weights never download implicitly: ``weights`` is a local file (``.safetensors``/``.bin``/``.pth``),
``"random"``, or ``None`` with ``hub=True`` to fetch from the Hugging Face hub. Only ``tiny`` defaults to
random weights. Deliberate deviation from some model cards (GigaPath: resize 256 + centre crop 224;
Virchow2: bicubic): every encoder here sees the whole tile resized to its input size with antialiased
bilinear interpolation on the device, as CLAM and UNI do, so no tissue at the tile border is cropped away.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.features.weights import file_sha256, hf_vit_to_timm, load_into, load_state_dict
from milkit.registry import Registry

__all__ = ["ENCODERS", "EncoderSpec", "PatchEncoder", "create_encoder", "list_encoders", "IMAGENET_MEAN",
           "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODERS: Registry["PatchEncoder"] = Registry("encoder")


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder and feed it correctly."""

    name: str
    arch: str                                 # timm architecture
    kwargs: dict[str, Any]                    # timm create_model kwargs (architecture only)
    dim: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"                   # preferred on GPU: fp32 | fp16 | bf16
    pool: str = "model"                       # model | layer3_avg (CLAM ResNet) | cls_mean (Virchow)
    hub: str | None = None                    # timm hub id, or "hf:<repo>/<file>" for transformers files
    weights_file: str = "pytorch_model.bin"   # what the user should point `weights` at
    weights_format: str = "timm"              # timm | hf_vit (transformers ViT / DINOv2 layout)
    random_default: bool = False
    channels_last: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class PatchEncoder(nn.Module):
    """``encode(uint8 (B, H, W, 3)) -> (B, dim)``: resize + normalise on the tiles' device, then the network."""

    def __init__(self, spec: EncoderSpec, model: nn.Module, weights_id: str) -> None:
        super().__init__()
        self.spec, self.model, self.weights_id = spec, model, weights_id
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        if spec.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def preprocess(self, tiles: Tensor) -> Tensor:
        """uint8 ``(B, H, W, 3)`` → normalised float ``(B, 3, S, S)``, S = ``input_size``.

        On the CPU the resize runs on uint8 (PyTorch's vectorised channels-last kernel, ~15× cheaper than
        float; ≤ 1/255 rounding difference); on GPUs it runs in float32.
        """
        x = tiles.permute(0, 3, 1, 2)  # a channels-last view, no copy
        s = self.spec.input_size
        resize = x.shape[-2:] != (s, s)
        if resize and x.device.type == "cpu":
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            resize = False
        x = x.float().div_(255.0)
        if resize:
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.spec.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``(B, 3, S, S)`` → ``(B, dim)``."""
        out = self.model(x)
        if self.spec.pool == "layer3_avg":
            return out[-1].mean(dim=(2, 3))
        if self.spec.pool == "cls_mean":
            return torch.cat([out[:, 0], out[:, self.model.num_prefix_tokens:].mean(1)], dim=-1)
        return out

    def encode(self, tiles: Tensor) -> Tensor:
        return self(self.preprocess(tiles))

    def attrs(self, precision: str) -> dict[str, Any]:
        """Attributes of the ``features`` dataset."""
        return {"encoder": self.spec.name, "arch": self.spec.arch, "weights_hash": self.weights_id,
                "input_size": self.spec.input_size, "precision": precision, "mean": list(self.spec.mean),
                "std": list(self.spec.std)}


def _timm_model(spec: EncoderSpec, **extra: Any) -> nn.Module:
    import timm

    return timm.create_model(spec.arch, pretrained=False, **{**_timm_kwargs(spec), **extra})


def _timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    import timm.layers

    kwargs = dict(spec.kwargs)
    if isinstance(kwargs.get("mlp_layer"), str):
        kwargs["mlp_layer"] = getattr(timm.layers, kwargs["mlp_layer"])
    if spec.pool == "layer3_avg":
        kwargs.update(features_only=True, out_indices=(3,))
    return kwargs


def _build(spec: EncoderSpec, weights: str | None = None, hub: bool = False, seed: int = 0) -> PatchEncoder:
    if weights == "random" or (weights is None and spec.random_default and not hub):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _timm_model(spec)
        return PatchEncoder(spec, model.eval(), f"random:{seed}")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"encoder '{spec.name}': weights file {path} not found "
                              f"(expected {spec.weights_file}{_from(spec)})")
        sd = load_state_dict(path)
        if spec.weights_format == "hf_vit":
            sd = hf_vit_to_timm(sd)
        model = _timm_model(spec)
        load_into(model, sd, str(path))
        return PatchEncoder(spec, model.eval(), f"sha256:{file_sha256(path)}")
    if hub and spec.hub:
        return PatchEncoder(spec, _from_hub(spec).eval(), f"hub:{spec.hub}")
    raise ConfigError(f"encoder '{spec.name}' needs weights: set encoder.weights=<path to {spec.weights_file}"
                      f"{_from(spec)}>, or encoder.hub=true where the hub is reachable, "
                      f"or encoder.weights=random for random weights")


def _from(spec: EncoderSpec) -> str:
    return f" from {spec.hub.removeprefix('hf:')}" if spec.hub else ""


def _from_hub(spec: EncoderSpec) -> nn.Module:
    try:
        if spec.hub.startswith("hf:"):
            from huggingface_hub import hf_hub_download

            repo, _, fname = spec.hub[3:].rpartition("/")
            sd = load_state_dict(hf_hub_download(repo, fname))
            model = _timm_model(spec)
            load_into(model, hf_vit_to_timm(sd) if spec.weights_format == "hf_vit" else sd, spec.hub)
            return model
        import timm

        return timm.create_model(spec.hub, pretrained=True, **_timm_kwargs(spec))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, auth (gated models) or offline errors
        raise ConfigError(f"encoder '{spec.name}': cannot fetch {spec.hub} ({str(exc).splitlines()[0]}); "
                          f"download {spec.weights_file} and set encoder.weights=<file>") from None


def register_encoder(spec: EncoderSpec) -> None:
    ENCODERS.add(spec.name, functools.partial(_build, spec), dim=spec.dim, input_size=spec.input_size,
                 precision=spec.precision, arch=spec.arch, spec=spec)


def create_encoder(name: str, weights: str | None = None, hub: bool = False, seed: int = 0) -> PatchEncoder:
    """Build a registered encoder in eval mode (Hydra ``_target_`` of ``milkit/conf/encoder/*.yaml``)."""
    return ENCODERS.create(name, weights=weights, hub=hub, seed=seed)


def list_encoders() -> list[str]:
    return ENCODERS.names()


def _vit(**kw: Any) -> dict[str, Any]:
    return {"num_classes": 0, "dynamic_img_size": True, **kw}


def _swiglu() -> dict[str, Any]:
    return {"mlp_layer": "SwiGLUPacked", "act_layer": "silu"}  # resolved in _timm_model (timm imported lazily)


_HOPT_MEAN, _HOPT_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)

for _spec in [
    EncoderSpec("tiny", "test_vit", {"num_classes": 0, "img_size": 64, "global_pool": "avg"}, dim=64,
                input_size=64, random_default=True),
    EncoderSpec("resnet50_trunc", "resnet50", {}, dim=1024, pool="layer3_avg", channels_last=True,
                hub="hf-hub:timm/resnet50.tv_in1k",
                weights_file="pytorch_model.bin (timm resnet50.tv_in1k) or resnet50-0676ba61.pth (torchvision)"),
    EncoderSpec("uni", "vit_large_patch16_224", _vit(img_size=224, patch_size=16, init_values=1e-5), dim=1024,
                precision="fp16", hub="hf-hub:MahmoodLab/UNI"),
    EncoderSpec("uni2_h", "vit_giant_patch14_224",
                _vit(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                     mlp_ratio=2.66667 * 2, no_embed_class=True, reg_tokens=8, **_swiglu()),
                dim=1536, precision="bf16", hub="hf-hub:MahmoodLab/UNI2-h"),
    EncoderSpec("virchow2", "vit_huge_patch14_224",
                _vit(img_size=224, init_values=1e-5, mlp_ratio=5.3375, global_pool="", reg_tokens=4, **_swiglu()),
                dim=2560, pool="cls_mean", precision="fp16", hub="hf-hub:paige-ai/Virchow2"),
    EncoderSpec("gigapath", "vit_giant_patch14_dinov2",
                {"num_classes": 0, "img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                 "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334},
                dim=1536, precision="fp16", hub="hf-hub:prov-gigapath/prov-gigapath"),
    EncoderSpec("hoptimus0", "vit_giant_patch14_reg4_dinov2",
                {"num_classes": 0, "img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
                dim=1536, mean=_HOPT_MEAN, std=_HOPT_STD, precision="fp16", hub="hf-hub:bioptimus/H-optimus-0"),
    EncoderSpec("phikon", "vit_base_patch16_224",
                _vit(norm_layer=functools.partial(nn.LayerNorm, eps=1e-12)), dim=768,
                hub="hf:owkin/phikon/model.safetensors", weights_file="model.safetensors (transformers ViTModel)",
                weights_format="hf_vit"),
    EncoderSpec("phikon_v2", "vit_large_patch16_224", _vit(init_values=1e-5), dim=1024,
                hub="hf:owkin/phikon-v2/model.safetensors",
                weights_file="model.safetensors (transformers Dinov2Model)", weights_format="hf_vit"),
]:
    register_encoder(_spec)
