"""``run_continual(cfg)``: learn a task sequence one task at a time and evaluate every seen task after each.

Per task t: ``method.begin_task`` → a fresh Lightning ``Trainer`` fits ``ContinualTaskModule`` on task t's training
bags (fixed epochs; the final model is kept, as upstream) → ``method.end_task`` → the instance threshold θ_t is
chosen on task t's validation bags → every task s ≤ t is evaluated on its test bags. Validation is never the
test set. Outputs (in ``cfg.paths.output_dir``): ``results.json`` (matrices, summaries, thresholds, per-task
method records) and ``matrix_<metric>.csv``.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from milkit.continual.bppl import instance_probabilities
from milkit.continual.methods.base import ContinualMethod
from milkit.continual.metrics import METRICS, ContinualMatrix, TaskPredictions, task_metrics, youden_threshold
from milkit.continual.module import ContinualTaskModule
from milkit.continual.tasks import build_tasks
from milkit.data.bag import Bag, collate_bags
from milkit.errors import ConfigError
from milkit.models.base import MILModel
from milkit.tasks import build_task
from milkit.utils.io import atomic_path
from milkit.utils.workers import worker_init

__all__ = ["run_continual", "predict"]

log = logging.getLogger(__name__)


def _loader(bags: Sequence[Bag], batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(bags, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_bags, generator=gen,
                      num_workers=num_workers, worker_init_fn=worker_init())


def _eval_device(accelerator: str) -> torch.device:
    wants_gpu = str(accelerator) in {"auto", "gpu", "cuda"}
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict(model: MILModel, bags: Sequence[Bag], batch_size: int, device: torch.device,
            num_workers: int = 0) -> TaskPredictions:
    """Bag logits and per-bag instance probabilities/labels of ``bags`` (model in eval mode)."""
    model.to(device).eval()
    logits, ys, probs, inst_y = [], [], [], []
    for batch in _loader(bags, batch_size, shuffle=False, num_workers=num_workers):
        batch = batch.to(device)
        out = model(batch.x, batch.mask, batch.coords)
        logits.append(out.logits.float().cpu())
        ys.append(batch.y.cpu())
        if out.instance_scores is not None and batch.instance_y is not None:
            p = instance_probabilities(out.instance_scores.float(), batch.mask).cpu()
            for i, n in enumerate(batch.lengths.tolist()):
                probs.append(p[i, :n].numpy())
                inst_y.append(batch.instance_y[i, :n].cpu().numpy())
    return TaskPredictions(torch.cat(logits).numpy(), torch.cat(ys).numpy(), probs, inst_y)


def _fit(model: MILModel, method: ContinualMethod, cfg: DictConfig, loader: DataLoader, out_dir: Path) -> None:
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = ContinualTaskModule(model, method, instantiate(cfg.optimizer), scheduler)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_model_summary=False,
                          default_root_dir=str(out_dir))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        trainer.fit(module.train(), loader)  # Lightning keeps module modes; evaluation left it in eval mode


def _format_row(matrix: ContinualMatrix, t: int, metric: str) -> str:
    return " ".join("  nan" if math.isnan(v) else f"{v:.3f}" for v in matrix.values[metric][t, : t + 1])


def run_continual(cfg: DictConfig) -> dict[str, Any]:
    """Run the continual protocol described by ``cfg`` (root config ``milkit/conf/continual.yaml``); returns the results."""
    if build_task(cfg).name != "classification":
        raise ConfigError(f"continual learning supports task=classification only, got task={build_task(cfg).name}")
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    tasks = build_tasks(cfg.continual.tasks)
    model = instantiate(cfg.model, num_classes=tasks[0].num_classes)
    method = instantiate(cfg.method, _convert_="all")
    if not isinstance(method, ContinualMethod):
        raise ConfigError(f"method: {type(method).__name__} is not a continual method (use finetune, lwf, ewc, "
                          f"lora or comel)")
    out_dir = Path(cfg.paths.output_dir)
    device = _eval_device(cfg.trainer.get("accelerator", "auto"))
    batch_size, workers = int(cfg.data.batch_size), int(cfg.data.get("num_workers", 0))
    matrix, thresholds, records = ContinualMatrix([t.name for t in tasks]), [], []
    for t, task in enumerate(tasks):
        method.begin_task(model, t, task.num_classes)
        train = _loader(task.splits.train, batch_size, shuffle=True, seed=int(cfg.seed) + t, num_workers=workers)
        _fit(model, method, cfg, train, out_dir)
        records.append(method.end_task(model, t, _loader(task.splits.train, batch_size, False), device))
        p_val, y_val = predict(model, task.splits.val, batch_size, device, workers).positive_bag_instances()
        thresholds.append(youden_threshold(p_val, y_val) if len(y_val) else None)
        for s in range(t + 1):
            pred = predict(model, tasks[s].splits.test, batch_size, device, workers)
            matrix.record(t, s, task_metrics(pred, tasks[s].offset, tasks[s].num_classes, thresholds[s]))
        log.info(f"[continual] after task {t + 1}/{len(tasks)} ({task.name}): acc {_format_row(matrix, t, 'acc')} | "
                 f"auc {_format_row(matrix, t, 'auc')} | inst_auc {_format_row(matrix, t, 'inst_auc')}")
    results = {**matrix.to_dict(), "thresholds": thresholds, "task_records": records, "seed": int(cfg.seed),
               "method": type(method).__name__}
    _write(out_dir, matrix, results)
    summary = results["summary"]
    log.info("[continual] " + ", ".join(f"{m}: final {summary[m]['final']:.3f} bwt {summary[m]['bwt']:+.3f}"
                                        for m in ("acc", "auc", "inst_auc", "dice")))
    log.info(f"[continual] results written to {out_dir / 'results.json'}")
    return results


def _write(out_dir: Path, matrix: ContinualMatrix, results: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=str))
    for metric in METRICS:
        with atomic_path(out_dir / f"matrix_{metric}.csv") as tmp:
            np.savetxt(tmp, matrix.values[metric], delimiter=",", fmt="%.6f",
                       header=",".join(matrix.task_names), comments="")
