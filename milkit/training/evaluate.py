"""``evaluate(cfg)``: score a trained checkpoint on a bag source (all bags, or one split of a split table)."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from milkit.data.sources import BagSource
from milkit.data.splits import SPLITS, load_splits
from milkit.errors import ConfigError
from milkit.training.checkpoint import load_checkpoint
from milkit.utils.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["evaluate"]


def _split_ids(splits: pd.DataFrame, where: str, fold: Any, split: Any) -> list[str]:
    """The bag ids of one (fold, split) of a split table; an unknown fold or split name lists the valid ones."""
    folds = sorted(int(f) for f in splits["fold"].unique())
    if not isinstance(fold, int) or fold not in folds:
        raise ConfigError(f"fold={fold} is not in {where} (folds: {', '.join(map(str, folds))})")
    if split not in SPLITS:
        raise ConfigError(f"split={split} is not a split name (use {', '.join(SPLITS)})")
    sel = splits[(splits["fold"] == fold) & (splits["split"] == split)]
    if sel.empty:
        raise ConfigError(f"fold {fold} of {where} has no '{split}' bags")
    return sel["bag_id"].tolist()


def _check_unseen(splits: pd.DataFrame, where: str, trained_on: str | None, fold: int, ids: list[str],
                  ckpt: str) -> None:
    """A checkpoint of fold k scored on another fold's selection must not meet the bags it trained or was
    validated on there: the scores would be optimistic (cross-validation folds share their training bags)."""
    match = re.search(r"fold(\d+)$", trained_on or "")
    if match is None or int(match.group(1)) == fold:
        return
    own = int(match.group(1))
    seen = set(splits.loc[(splits["fold"] == own) & splits["split"].isin(["train", "val"]), "bag_id"])
    overlap = seen.intersection(ids)
    if overlap:
        raise ConfigError(f"{ckpt}: trained as {trained_on}, but {len(overlap)} of the {len(ids)} selected bags of "
                          f"fold {fold} in {where} were in its training or validation split (the scores would leak); "
                          f"evaluate fold={own}, or bags it has not seen")


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
    if not cfg.get("splits_csv") and (cfg.get("fold", 0) != 0 or cfg.get("split", "test") != "test"):
        raise ConfigError(f"fold={cfg.get('fold', 0)} split={cfg.get('split', 'test')} select from a split table: "
                          "give splits_csv=<run>/splits.csv (without it every bag is scored)")
    if cfg.get("splits_csv"):
        splits = load_splits(cfg.splits_csv, source.records)
        ids = _split_ids(splits, cfg.splits_csv, cfg.get("fold", 0), cfg.get("split", "test"))
        _check_unseen(splits, cfg.splits_csv, loaded.fold, cfg.get("fold", 0), ids, cfg.ckpt_path)
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
    log.info("[milkit] " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    log.info(f"[milkit] predictions and metrics: {out}")
    return result
