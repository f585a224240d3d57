"""Local weight files for patch encoders: reading, HF-transformers → timm key conversion, hashing.

Phikon (``transformers.ViTModel``) and Phikon-v2 (``transformers.Dinov2Model``) ship only in the
transformers layout; ``hf_vit_to_timm`` renames their keys to timm's VisionTransformer (separate q/k/v
projections are concatenated into ``qkv``, ``layer_scale*.lambda1`` become ``ls*.gamma``).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from milkit.errors import ConfigError

__all__ = ["load_state_dict", "hf_vit_to_timm", "file_sha256", "load_into"]

_NESTED = ("state_dict", "model", "module", "teacher")
_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.(layernorm_before|norm1)\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.(layernorm_after|norm2)\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^layernorm\.", "norm."),
]
_HF_DROP = re.compile(r"^(pooler\.|embeddings\.mask_token$)")
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors from ``.safetensors`` or a torch pickle (``weights_only``), unwrapping common nestings."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure means an unusable file
        raise ConfigError(f"{path}: cannot read weights ({str(exc).splitlines()[0]})") from None
    while isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in _NESTED:
        sd = next(iter(sd.values()))
    for key in _NESTED:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return sd


def hf_vit_to_timm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers ViT/DINOv2 state dict (optionally prefixed ``vit.``/``dinov2.``) to timm."""
    sd = {re.sub(r"^(vit|dinov2|model)\.", "", k): v for k, v in sd.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if _HF_DROP.match(key):
            continue
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        new = key
        for pattern, repl in _HF_RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    for (layer, kind), parts in qkv.items():
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def _strip_prefix(sd: dict[str, Tensor], wanted: set[str]) -> dict[str, Tensor]:
    if any(k in wanted for k in sd):
        return sd
    for prefix in ("module.", "model.", "backbone.", "encoder.", "trunk."):
        stripped = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if any(k in wanted for k in stripped):
            return stripped
    return sd


def load_into(model: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """Load ``sd`` into ``model``: every model tensor must be present with the right shape; extra keys
    (classifier heads, layers a truncated network drops) are ignored. Absolute position embeddings of a
    different grid are resampled (timm), as timm does for its own checkpoints."""
    own = model.state_dict()
    sd = _strip_prefix(sd, set(own))
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        npt = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        sd = {**sd, "pos_embed": resample_abs_pos_embed(sd["pos_embed"], list(grid), num_prefix_tokens=npt)}
    missing = [k for k in own if k not in sd]
    if missing:
        raise ConfigError(f"{source}: weights lack {len(missing)} of {len(own)} tensors of the architecture "
                          f"(first: {', '.join(missing[:3])}); wrong file for this encoder?")
    bad = [k for k in own if sd[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        raise ConfigError(f"{source}: tensor {k} has shape {tuple(sd[k].shape)}, architecture needs "
                          f"{tuple(own[k].shape)}")
    model.load_state_dict({k: sd[k] for k in own}, strict=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
