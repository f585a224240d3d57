"""``evaluate(cfg)``: score a trained checkpoint on a bag source (all bags, or one split of a split table)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from milkit.data.sources import BagSource
from milkit.data.splits import load_splits
from milkit.errors import ConfigError
from milkit.training.checkpoint import load_checkpoint
from milkit.utils.io import atomic_path

__all__ = ["evaluate"]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Predict every selected bag with the checkpoint's model; write predictions CSV and metrics JSON.

    Config keys: ``ckpt_path``; ``data`` (defaults to the data config stored in the checkpoint);
    ``splits_csv`` + ``fold`` + ``split`` to restrict to one split; ``paths.output_dir``.
    """
    loaded = load_checkpoint(cfg.ckpt_path)
    data_cfg = cfg.get("data") or OmegaConf.create(loaded.cfg["data"])
    source: BagSource = loaded.task.prepare(instantiate(data_cfg.source))
    if source.in_dim != loaded.model.in_dim:
        raise ConfigError(f"{cfg.ckpt_path}: model expects D={loaded.model.in_dim}, features have D={source.in_dim}")
    ids = source.records["bag_id"].tolist()
    if cfg.get("splits_csv"):
        splits = load_splits(cfg.splits_csv, source.records)
        sel = splits[(splits["fold"] == cfg.get("fold", 0)) & (splits["split"] == cfg.get("split", "test"))]
        ids = sel["bag_id"].tolist()
    task = loaded.task
    metrics = task.make_metrics("eval/", loaded.model.num_classes)
    rows = []
    for bag_id in ids:
        bag = source.load(bag_id)
        logits = loaded.forward_bag(bag).logits
        y = torch.tensor([bag.label])
        metrics.update(logits, y)
        rows.extend(task.prediction_rows([bag_id], logits, y))
    # classification metrics need two classes; survival metrics are NaN where undefined
    defined = not task.categorical or len({r["label"] for r in rows}) > 1
    result = {k: float(v) for k, v in metrics.compute().items()} if defined else {}
    result["n_bags"] = len(rows)
    out = Path(cfg.paths.output_dir)
    with atomic_path(out / "predictions.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print("[milkit] " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    print(f"[milkit] predictions and metrics: {out}")
    return result
