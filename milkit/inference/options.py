"""The keys of ``milkit/conf/infer.yaml`` as dataclasses, so ``infer`` also works from a plain dict with defaults."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from milkit.errors import ConfigError
from milkit.preprocess.slides import DEFAULT_EXTENSIONS

__all__ = ["InferOptions", "HeatmapOptions", "MontageOptions", "EncoderOptions"]


@dataclass
class HeatmapOptions:
    enabled: bool = True
    max_size: int = 2048          # longest side of the PNG (px); bounds memory whatever the slide size
    vis_mpp: float | None = None  # resolution (µm/px); null = a patch spans patch_px pixels; coarsened to max_size
    patch_px: float = 16.0
    cmap: str = "jet"
    alpha: float = 0.5            # opacity of the colours over the thumbnail
    tissue_only: bool = True      # colour only pixels inside the tissue mask (and under a patch)


@dataclass
class MontageOptions:
    enabled: bool = True
    k: int = 8                    # top-k and bottom-k patches
    cols: int = 8


@dataclass
class EncoderOptions:
    name: str | None = None       # null = the encoder recorded in the checkpoint
    weights: str | None = None    # local weights file (its sha256 must match the recorded one)
    hub: bool = False
    verify_weights: bool = True


_GROUPS = {"heatmap": HeatmapOptions, "montage": MontageOptions, "encoder": EncoderOptions}


@dataclass
class InferOptions:
    slide: str
    checkpoint: str
    output: str
    reader: str = "auto"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    recursive: bool = False
    slide_mpp: float | None = None
    force_mpp: bool = False
    target_mpp: float | None = None   # null = as recorded in the checkpoint, like the next four
    patch_size: int | None = None
    overlap: int | None = None
    min_tissue: float | None = None
    segmenter: dict[str, Any] | None = None
    tissue_geojson: str | None = None
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    reuse: bool = True
    features_dir: tuple[str, ...] = ()
    batch_size: int = 64
    num_workers: int | None = 0
    device: str = "auto"
    precision: str | None = None
    annotations: str | None = None
    label_min_fraction: float = 0.5
    heatmap: HeatmapOptions = field(default_factory=HeatmapOptions)
    geojson: bool = True
    montage: MontageOptions = field(default_factory=MontageOptions)
    progress: bool = True

    @classmethod
    def from_cfg(cls, cfg: DictConfig | dict[str, Any]) -> "InferOptions":
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        for key in ("slide", "checkpoint", "output"):
            if data.get(key) in (None, "???"):
                raise ConfigError(f"{key} is required (python scripts/infer_slide.py slide=<file|folder|CSV> "
                                  "checkpoint=<file> output=<folder>)")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - {"hydra", "log_level"})  # the entry point's keys
        if unknown:
            raise ConfigError(f"unknown inference option(s): {', '.join(unknown)}")
        kw: dict[str, Any] = {}
        for key, value in data.items():
            if key in _GROUPS:
                kw[key] = _group(key, value)
            elif key == "features_dir":
                kw[key] = tuple(value) if isinstance(value, (list, tuple)) else ((value,) if value else ())
            elif key in names:
                kw[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kw)

    def overrides(self) -> dict[str, Any]:
        """Non-null preprocessing overrides for ``resolve_settings``."""
        seg = None if self.segmenter is None else {k: v for k, v in self.segmenter.items() if k != "_target_"}
        return {"target_mpp": self.target_mpp, "patch_size": self.patch_size, "overlap": self.overlap,
                "min_tissue": self.min_tissue, "segmenter": seg, "encoder": self.encoder.name}


def _group(key: str, value: Any) -> Any:
    cls = _GROUPS[key]
    if isinstance(value, bool) and hasattr(cls, "enabled"):
        return cls(enabled=value)
    value = dict(value or {})
    unknown = sorted(set(value) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(f'{key}.{u}' for u in unknown)}")
    return cls(**value)
