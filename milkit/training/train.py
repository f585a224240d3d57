"""``train(cfg)``: cross-validated training of any model with any method on any bag source.

For each (repeat, fold): build the datamodule, model and method from the config, fit with early stopping
and checkpointing on the validation metric, test the best checkpoint on the fold's test split, and collect
metrics. Prints a per-fold table with mean ± std and where the outputs went; returns the summary.

While a fold trains, its checkpoints live in ``fold<k>/checkpoints/incomplete/``; they move to
``fold<k>/checkpoints/`` (``best.ckpt``) only when the fold's fit has finished, so that an interrupted or killed
fold never leaves a file that ``eval.py``, ``infer_slide.py`` or a teacher path take for a finished one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import milkit
from milkit.data.datamodule import MILDataModule
from milkit.data.sources import BagSource
from milkit.data.splits import check_splits, load_splits, make_cv_splits, predefined_split, save_splits
from milkit.errors import ConfigError, OutputError, RunInterrupted, storage_error_line
from milkit.models import model_info
from milkit.tasks import ClassificationTask, Task, build_task
from milkit.training.checkpoint import INCOMPLETE, stats_to_info
from milkit.training.interrupt import StopWhenSignalled, ctrl_c_stops_the_run
from milkit.training.methods import TrainingMethod
from milkit.training.module import MILLitModule
from milkit.utils.dist import is_global_zero
from milkit.utils.io import atomic_path, writable_dir
from milkit.utils.signals import StopSignal

__all__ = ["train", "resolve_splits", "build_run_components", "with_fold"]

log = logging.getLogger("milkit")


def resolve_splits(cfg: DictConfig, source: BagSource, repeat: int, task: Task | None = None) -> pd.DataFrame:
    """The split table: a saved CSV, the cohort's own ``split`` column, or a fresh seeded K-fold stratified on the
    task's key (``task.strata``)."""
    if cfg.cv.get("splits_csv"):
        return load_splits(cfg.cv.splits_csv, source.records)
    if "split" in source.records and cfg.cv.get("use_cohort_split", True):
        return check_splits(predefined_split(source.records, float(cfg.cv.get("val_fraction", 0.2)),
                                             int(cfg.seed) + repeat), "cohort split column")
    records = source.records if task is None else task.strata(source.records, int(cfg.cv.folds))
    return check_splits(make_cv_splits(records, int(cfg.cv.folds), int(cfg.seed) + repeat))


def _quiet_lightning() -> None:
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*worker processes in total.*")  # I/O-bound loaders: more than cores
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def with_fold(node: DictConfig, fold_name: str) -> Any:
    """``node`` as a container with ``{fold}`` in its strings replaced by the fold name, for per-fold files
    (e.g. MHIM's teacher ``method.teacher_init=<baseline run>/{fold}/checkpoints/best.ckpt``)."""
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{fold}", fold_name)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return [fill(v) for v in value] if isinstance(value, list) else value

    return fill(OmegaConf.to_container(node, resolve=True))


def build_run_components(cfg: DictConfig, source: BagSource, fold_splits: pd.DataFrame, fold_dir: Path,
                         fold_name: str, task: Task | None = None) -> tuple[MILDataModule, MILLitModule, L.Trainer]:
    """Everything one fold needs, instantiated from the config (shared by ``train`` and tests). ``source`` must
    have gone through ``task.prepare``; the task is fitted on this fold's training bags."""
    task = task if task is not None else build_task(cfg)
    dm = MILDataModule(source, fold_splits, batch_size=cfg.data.batch_size,
                       eval_batch_size=cfg.data.get("eval_batch_size", 1),
                       max_instances=cfg.data.get("max_instances"), standardize=cfg.data.get("standardize", False),
                       num_workers=cfg.data.get("num_workers", 0),
                       balanced_sampler=cfg.data.get("balanced_sampler", False))
    dm.setup("fit")
    if OmegaConf.is_missing(cfg.data, "in_dim"):
        raise ConfigError(f"data.in_dim is not set; the features of '{source.name}' have D={source.in_dim} "
                          f"(set data.in_dim={source.in_dim})")
    train_records = source.records[source.records["bag_id"].isin(dm.ids["train"])]
    task.fit(train_records)
    if dm.balanced_sampler:
        dm.set_sample_groups(task.sample_groups(train_records))
    width = task.out_dim(int(cfg.model.num_classes))  # models are task-agnostic: num_classes = output width
    model = instantiate(cfg.model, num_classes=width)
    if model.in_dim != source.in_dim:
        raise ConfigError(f"model.in_dim={model.in_dim} but the features of '{source.name}' have D={source.in_dim} "
                          f"(set data.in_dim={source.in_dim})")
    if isinstance(task, ClassificationTask) and (model.num_classes not in (source.num_classes, 1) or (
            model.num_classes == 1 and source.num_classes != 2)):
        raise ConfigError(f"model.num_classes={model.num_classes} but '{source.name}' has {source.num_classes} classes")
    run_cfg = OmegaConf.to_container(cfg, resolve=True)
    run_cfg["model"]["num_classes"] = width
    run_info = {"cfg": run_cfg, "class_names": source.class_names, "task": task.state(),
                "feature_meta": source.feature_meta(), "feature_stats": stats_to_info(dm.stats),
                "fold": fold_name, "milkit_version": milkit.__version__}
    module = MILLitModule(model, instantiate(with_fold(cfg.method, fold_name)), instantiate(cfg.optimizer),
                          instantiate(cfg.scheduler) if cfg.get("scheduler") else None, run_info, task)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    for cb in callbacks:
        if isinstance(cb, L.pytorch.callbacks.ModelCheckpoint):
            cb.dirpath = str(fold_dir / "checkpoints" / INCOMPLETE)
    loggers = [instantiate(lg, save_dir=str(fold_dir.parent), name=fold_dir.name, version="")
               for lg in (cfg.get("logger") or {}).values() if lg is not None and "_target_" in lg]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     default_root_dir=str(fold_dir))
    return dm, module, trainer


def _check_method(cfg: DictConfig) -> None:
    """The method must be a (non-continual) training method: continual ones need ``scripts/continual.py``."""
    from milkit.continual.methods.base import ContinualMethod

    target = cfg.method._target_
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - an unknown target fails in one line below, like any other
        cls = None
    if isinstance(cls, type) and issubclass(cls, ContinualMethod):
        raise ConfigError(f"method: {target} is a continual method; run it with scripts/continual.py "
                          f"(milkit-continual), not the supervised trainer")
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise ConfigError(f"method: {target} is not a milkit TrainingMethod (use supervised, mhim, mhim_v2, ...)")
    if cls.needs_instance_scores and not model_info(cfg.model.model_name)["instance_scores"]:
        raise ConfigError(f"method: {target} reads instance scores, which model '{cfg.model.model_name}' does not "
                          f"return (registry metadata instance_scores=False)")


def _finish_checkpoints(trainer: L.Trainer, ckpt_dir: Path) -> str | None:
    """Move a finished fold's checkpoints out of ``incomplete/``; the best one's final path (None without one)."""
    ckpt_cb = trainer.checkpoint_callback
    staged = ckpt_dir / INCOMPLETE
    if trainer.is_global_zero and staged.is_dir():
        for f in staged.iterdir():
            os.replace(f, ckpt_dir / f.name)
        staged.rmdir()
    trainer.strategy.barrier()
    if ckpt_cb is None or not ckpt_cb.best_model_path:
        return None
    # rank zero's path (broadcast by Lightning): under multi-node runs with one run folder per node, the other
    # ranks read the checkpoint where rank zero moved it, not under their own folder
    staged_best = Path(ckpt_cb.best_model_path)
    ckpt_cb.best_model_path = str(staged_best.parent.parent / staged_best.name)
    return ckpt_cb.best_model_path


def _fit_fold(cfg: DictConfig, source: BagSource, fold_splits: pd.DataFrame, fold_dir: Path,
              fold_name: str, seed: int, task: Task, ctrl_c: StopSignal) -> dict[str, Any]:
    L.seed_everything(seed, workers=True, verbose=False)
    dm, module, trainer = build_run_components(cfg, source, fold_splits, fold_dir, fold_name, task)
    trainer.callbacks.append(StopWhenSignalled(ctrl_c))
    shutil.rmtree(fold_dir / "checkpoints" / INCOMPLETE, ignore_errors=True)  # left by a killed run
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm)
    except RunInterrupted:
        raise RunInterrupted(f"{fold_name} stopped in epoch {trainer.current_epoch}") from None
    except OSError as exc:  # a checkpoint could not be written (an unreadable input keeps its own line)
        if storage_error_line(exc) is None or not str(exc.filename or fold_dir).startswith(str(fold_dir)):
            raise
        raise OutputError(f"{fold_name}: cannot save to {storage_error_line(exc, fold_dir / 'checkpoints')}") from None
    best = _finish_checkpoints(trainer, fold_dir / "checkpoints")
    ckpt_cb = trainer.checkpoint_callback
    row: dict[str, Any] = {"fold": fold_name, "epochs": trainer.current_epoch, "fit_s": time.perf_counter() - t0,
                           "checkpoint": best}
    if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        row[f"best_{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
    if cfg.get("test_after_fit", True) and dm.has("test"):
        metrics = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)[0]
        row.update({k: float(v) for k, v in metrics.items() if k.startswith("test/") and k != "test/loss"})
        if trainer.is_global_zero:
            preds = pd.DataFrame(module.test_predictions)
            with atomic_path(fold_dir / "test_predictions.csv") as tmp:
                preds.to_csv(tmp, index=False)
        row.update(task.fold_report(module, dm, fold_dir, seed))
    return row


def _std(vals: np.ndarray) -> float:
    return float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def _test_columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[str]:
    """The task's metrics first, then any other per-fold test numbers (CI bounds, oracle c-index)."""
    first = [f"test/{m}" for m in names]
    return first + sorted({k for r in rows for k in r if k.startswith("test/") and k not in first})


def _summarise(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    """Mean and std over folds; with repeated CV also the std over the per-repeat means (``repeat_std``), which is
    what papers that repeat k-fold CV usually report."""
    summary: dict[str, Any] = {"folds": rows}
    repeats = sorted({r.get("repeat", 0) for r in rows})
    for key in _test_columns(rows, names) + [k for k in rows[0] if k.startswith("best_")]:
        vals = np.array([r[key] for r in rows if key in r], dtype=float)
        if len(vals):
            summary[key] = {"mean": float(vals.mean()), "std": _std(vals)}
            if len(repeats) > 1:
                means = np.array([np.mean([r[key] for r in rows if key in r and r.get("repeat", 0) == k])
                                  for k in repeats])
                summary[key]["repeat_std"] = _std(means)
    return summary


def format_table(summary: dict[str, Any], names: tuple[str, ...]) -> str:
    """Per-fold rows and a mean ± std row for the test metrics."""
    cols = _test_columns(summary["folds"], names)
    widths = [max(11, len(c) - 4) for c in cols]
    lines = [f"{'fold':<10}" + "".join(f"{c.split('/')[1]:>{w}}" for c, w in zip(cols, widths)) + f"{'epochs':>8}"]
    for r in summary["folds"]:
        lines.append(f"{r['fold']:<10}" + "".join(f"{r.get(c, float('nan')):>{w}.3f}" for c, w in zip(cols, widths))
                     + f"{r['epochs']:>8}")
    ms = [summary.get(c) for c in cols]
    # ±repeats: the std over the means of the CV repeats
    for label, spread in (("mean±std", "std"), ("±repeats", "repeat_std")):
        if spread == "std" or any(m and spread in m for m in ms):
            lines.append(f"{label:<10}" + "".join(f"{m['mean']:>{w - 5}.3f}±{m[spread]:.2f}" if m else f"{'-':>{w}}"
                                                  for m, w in zip(ms, widths)))
    return "\n".join(lines)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured cross-validation; returns ``{"folds": [...], "test/auroc": {"mean", "std"}, ...}``."""
    _quiet_lightning()
    _check_method(cfg)
    out_dir = writable_dir(cfg.paths.output_dir)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with ctrl_c_stops_the_run() as ctrl_c:
        try:
            return _train(cfg, out_dir, rows, t0, ctrl_c)
        except RunInterrupted as stop:
            kept = ", ".join(r["fold"] for r in rows) or "none"
            raise RunInterrupted(f"{stop}; finished folds kept in {out_dir}: {kept} (an interrupted fold's "
                                 f"checkpoints stay in checkpoints/{INCOMPLETE}/, never taken as finished)") from None


def _train(cfg: DictConfig, out_dir: Path, rows: list[dict[str, Any]], t0: float,
           ctrl_c: StopSignal) -> dict[str, Any]:
    hooks = cfg.get("hooks") or {}
    if hooks.get("before"):
        instantiate(hooks.before)(cfg)  # e.g. generate or preprocess the data the source reads
    task = build_task(cfg)
    source: BagSource = task.prepare(instantiate(cfg.data.source))
    writer = is_global_zero()  # under DDP every process runs train(); one writes the run's files
    log.info(f"[milkit] data  {source.describe()}")
    log.info(f"[milkit] model {cfg.model.model_name}  method {cfg.method._target_.rsplit('.', 1)[-1]}  "
             f"task {task.name}  output {out_dir}")
    for repeat in range(int(cfg.cv.get("repeats", 1))):
        splits = resolve_splits(cfg, source, repeat, task)
        tag = f"r{repeat}_" if cfg.cv.get("repeats", 1) > 1 else ""
        if writer:
            save_splits(splits, out_dir / f"{tag}splits.csv")
        folds = sorted(splits["fold"].unique())
        wanted = cfg.cv.get("run_folds")
        for fold in folds if wanted is None else [f for f in folds if f in set(wanted)]:
            name = f"{tag}fold{fold}"
            row = _fit_fold(cfg, source, splits[splits["fold"] == fold], out_dir / name, name,
                            int(cfg.seed) + 1000 * repeat + int(fold), task, ctrl_c)
            row["repeat"] = repeat
            rows.append(row)
            shown = "  ".join(f"{k.split('/')[1]}={row[k]:.3f}" for k in row if k.startswith("test/"))
            log.info(f"[milkit] {name}: {shown}  epochs={row['epochs']}  ({row['fit_s']:.1f}s)")
    summary = _summarise(rows, task.metric_names)
    if writer:
        summary.update(task.finish(out_dir))  # e.g. the pooled Kaplan–Meier plot and log-rank p
    summary["wall_s"] = time.perf_counter() - t0
    monitored = f"best_{cfg.monitor}"
    if monitored in summary:  # the sweep objective is a validation score, never a test score
        summary["objective"] = summary[monitored]["mean"]
    if writer:
        with atomic_path(out_dir / "results.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    log.info(format_table(summary, task.metric_names))
    if summary.get("km_plot"):
        log.info(f"[milkit] Kaplan–Meier plot (test, split at the median training risk): {summary['km_plot']}  "
                 f"log-rank p={summary['logrank_p']:.2g}")
    if hooks.get("after"):
        summary["after"] = instantiate(hooks.after)(cfg, summary)  # e.g. slide inference on held-out slides
    log.info(f"[milkit] splits, checkpoints and logs: {out_dir}  (results.json, *splits.csv, fold*/)  "
             f"total {summary['wall_s']:.0f}s")
    return summary
