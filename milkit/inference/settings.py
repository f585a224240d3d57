"""What inference must reproduce: the preprocessing and encoder that made the training features.

The checkpoint stores ``feature_meta`` (the attributes of the training feature files: coordinates attributes
such as ``target_mpp``, ``patch_size``, ``overlap``, ``min_tissue``, ``segmenter``, and features attributes
``encoder``, ``weights_hash``, ``input_size``, ``mean``, ``std``). ``resolve_settings`` turns it, plus explicit
overrides, into ``SlideSettings``; ``build_encoder`` rebuilds the encoder and refuses weights that differ
from the recorded ones, and an encoder whose output width is not the model's input width.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from milkit.errors import ConfigError
from milkit.features.encoders import PatchEncoder, create_encoder
from milkit.wsi.segment import Segmenter, create_segmenter

__all__ = ["SlideSettings", "resolve_settings", "recorded_segmenter", "build_encoder", "build_segmenter"]

_DEFAULT_SEGMENTER = {"name": "hsv"}  # milkit/conf/segmenter/otsu.yaml; used only when nothing is recorded


@dataclass(frozen=True)
class SlideSettings:
    """Preprocessing settings for inference. ``notes`` lists every value that was not taken from the record."""

    target_mpp: float
    patch_size: int
    overlap: int
    min_tissue: float
    segmenter: dict[str, Any]
    encoder: str
    weights_hash: str | None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "notes": list(self.notes)}


def recorded_segmenter(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = meta.get("segmenter")
    if raw is None:
        return None
    try:
        params = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return None
    return params if isinstance(params, dict) and "name" in params else None


def resolve_settings(meta: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> SlideSettings:
    """Recorded values, replaced by non-null ``overrides`` (keys as in ``milkit/conf/infer.yaml``).

    Required: ``target_mpp`` (or TRIDENT's ``target_magnification``), ``patch_size`` and the encoder name;
    ``overlap``, ``min_tissue`` and the segmenter fall back to the preprocessing defaults, with a note.
    """
    notes: list[str] = []
    missing: list[str] = []

    def pick(key: str, default: Any = None, required: bool = False) -> Any:
        if overrides.get(key) is not None:
            if meta.get(key) is not None and overrides[key] != meta[key]:
                notes.append(f"{key}={overrides[key]} overrides the recorded {meta[key]}")
            return overrides[key]
        if meta.get(key) is not None:
            return meta[key]
        if key == "target_mpp" and meta.get("target_magnification"):
            return 10.0 / float(meta["target_magnification"])
        if required:
            missing.append(key)
        else:
            notes.append(f"{key} not recorded, using {default}")
        return default

    values = {"target_mpp": pick("target_mpp", required=True), "patch_size": pick("patch_size", required=True),
              "overlap": pick("overlap", 0), "min_tissue": pick("min_tissue", 0.25),
              "encoder": pick("encoder", required=True)}
    if missing:
        keys = ", ".join(f"{'encoder.name' if k == 'encoder' else k}=<value>" for k in missing)
        raise ConfigError(f"{where}: the checkpoint does not record {', '.join(repr(k) for k in missing)} "
                          f"(features made without milkit attributes?); set {keys}")
    seg = overrides.get("segmenter")
    if seg is None:
        seg = recorded_segmenter(meta)
        if seg is None or seg.get("name") == "geojson":
            why = "made from user tissue GeoJSONs" if seg else "not recorded"
            notes.append(f"segmenter {why}: using the default HSV/Otsu segmenter (or give tissue_geojson=)")
            seg = dict(_DEFAULT_SEGMENTER)
    encoder = str(values["encoder"])
    return SlideSettings(
        target_mpp=float(values["target_mpp"]), patch_size=int(values["patch_size"]), overlap=int(values["overlap"]),
        min_tissue=float(values["min_tissue"]), segmenter=dict(seg), encoder=encoder,
        weights_hash=meta.get("weights_hash") if encoder == meta.get("encoder") else None, notes=tuple(notes))


def build_segmenter(params: Mapping[str, Any]) -> Segmenter:
    """A segmenter from its recorded parameters (``{"name": "hsv", "seg_mpp": 8.0, ...}``)."""
    params = dict(params)
    params.pop("_target_", None)
    return create_segmenter(**params)


def _weights_arg(name: str, weights: str | None, recorded: str | None) -> tuple[str | None, int]:
    """What to pass to ``create_encoder`` (a path, ``"random"`` or None) and the seed, given the record."""
    kind, _, value = (recorded or "").partition(":")
    if weights is not None:
        return str(Path(weights).expanduser()), 0
    if kind == "random":
        return "random", int(value or 0)
    if kind == "sha256":
        raise ConfigError(f"encoder '{name}': the training features were made with local weights "
                          f"(sha256 {value[:12]}…); set encoder.weights=<that file>")
    return None, 0  # hub or unrecorded weights: create_encoder asks for a file or hub=true


def build_encoder(settings: SlideSettings, model_in_dim: int, meta: Mapping[str, Any], weights: str | None = None,
                  hub: bool = False, verify_weights: bool = True, where: str = "checkpoint") -> PatchEncoder:
    """The recorded encoder with matching weights; one-line ``ConfigError`` on any mismatch."""
    path, seed = _weights_arg(settings.encoder, weights, settings.weights_hash)
    encoder = create_encoder(settings.encoder, weights=path, hub=hub, seed=seed)
    if encoder.dim != model_in_dim:
        raise ConfigError(f"{where}: the model takes {model_in_dim}-d features but encoder '{settings.encoder}' "
                          f"gives {encoder.dim}-d")
    recorded = settings.weights_hash or ""
    if verify_weights and recorded.partition(":")[0] in ("sha256", "random") and encoder.weights_id != recorded:
        raise ConfigError(f"encoder '{settings.encoder}': weights {_short(encoder.weights_id)} differ from those the "
                          f"training features were made with ({_short(recorded)}); set encoder.verify_weights=false "
                          "to force")
    if settings.encoder == meta.get("encoder"):
        spec = encoder.spec
        for key, have in (("input_size", spec.input_size), ("mean", spec.mean), ("std", spec.std)):
            want = meta.get(key)
            if want is not None and not np.allclose(np.asarray(want, float), np.asarray(have, float)):
                raise ConfigError(f"encoder '{settings.encoder}': {key}={np.atleast_1d(have).tolist()} now, but the "
                                  f"training features used {np.atleast_1d(want).tolist()}")
    return encoder


def _short(weights_id: str) -> str:
    kind, _, value = weights_id.partition(":")
    return f"{kind} {value[:12]}…" if kind == "sha256" else weights_id
