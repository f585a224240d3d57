"""``infer(cfg)``: predictions and heatmaps for a slide, a folder of slides or a CSV of slides.

Outputs under ``output``: ``slides/<slide_id>/{prediction.json, heatmap.png, tiles.geojson, montage.png}``,
``predictions.csv`` (one row per slide, failures included), ``summary.json`` (settings, counts, and bag AUC
or mean instance AUC when the CSV has labels or ``annotations`` are given) and ``preprocessed/<tag>/`` (the
coordinates and features computed here, reused by a rerun). A slide that fails is recorded and the run goes
on; when a single slide file was given, its error is raised (one line).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from milkit.data.tables import read_table
from milkit.errors import ConfigError, DataError
from milkit.inference.options import InferOptions
from milkit.inference.predictor import SlidePredictor
from milkit.inference.slide import SlideOutcome, run_slide
from milkit.preprocess.manifest import one_line
from milkit.preprocess.slides import SlideEntry, discover_slides, slide_id_of
from milkit.utils.io import atomic_path, writable_dir

log = logging.getLogger(__name__)

__all__ = ["infer", "run_batch", "write_batch", "discover", "build_predictor", "bag_metrics"]


def discover(source: str, extensions: Sequence[str], recursive: bool) -> tuple[list[SlideEntry], dict[str, Any]]:
    """Slides of a file, folder or CSV, and the labels of a CSV's ``label`` column (by slide id)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"slide={path}: no such file or folder")
    if path.is_file() and path.suffix.lower() != ".csv":
        return [SlideEntry(slide_id_of(path), path)], {}
    entries = discover_slides(path, extensions, recursive)
    labels: dict[str, Any] = {}
    if path.suffix.lower() == ".csv":
        table = read_table(path, "slide CSV", dtype={"slide_id": str})
        col = next((c for c in ("path", "slide_path", "slide") if c in table.columns), None)
        if "label" in table.columns and col is not None:
            ids = table["slide_id"] if "slide_id" in table.columns else [slide_id_of(Path(str(p))) for p in table[col]]
            labels = {str(s): _label(v) for s, v in zip(ids, table["label"]) if pd.notna(v)}
    if not entries:
        raise DataError(f"slide={path}: no slides found (extensions {', '.join(extensions)})")
    return entries, labels


def _label(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def build_predictor(opts: InferOptions) -> SlidePredictor:
    enc = opts.encoder
    return SlidePredictor(opts.checkpoint, opts.overrides(), weights=enc.weights, hub=enc.hub,
                          verify_weights=enc.verify_weights, reuse=opts.reuse, features_dirs=opts.features_dir,
                          device=opts.device, precision=opts.precision, batch_size=opts.batch_size,
                          num_workers=opts.num_workers)


def _row(out: SlideOutcome) -> dict[str, Any]:
    r = out.record
    row = {"slide_id": r["slide_id"], "path": r["path"], "status": r["status"], "error": r.get("error", "")}
    if r["status"] != "ok":
        return row
    row.update({"label": r["label"], "predicted_label": r.get("predicted_label"), "num_instances": r["num_instances"]})
    row.update({f"prob_{i}": p for i, p in enumerate(r.get("probabilities", {}).values())})
    row.update({k: r[k] for k in ("risk",) if k in r})
    row.update({f"S_{k}": s for k, s in enumerate(r.get("survival_per_bin", []))})
    if "localization" in r:
        row["instance_auc"] = r["localization"]["instance_auc"]
    row.update({f"{k}_s": round(v, 4) for k, v in r["timings_s"].items()})
    return row


def run_batch(predictor: SlidePredictor, entries: Sequence[SlideEntry], opts: InferOptions,
              labels: dict[str, Any] | None = None, raise_errors: bool = False) -> list[SlideOutcome]:
    """Run every slide; a failing slide becomes a ``failed`` record unless ``raise_errors``."""
    labels = labels or {}
    outcomes = []
    for entry in tqdm(entries, desc="slides", unit="slide", disable=not opts.progress or len(entries) < 2):
        try:
            with tqdm(desc=entry.slide_id, unit="tile", leave=False, disable=not opts.progress) as bar:
                outcomes.append(run_slide(predictor, entry, opts, labels.get(entry.slide_id), bar))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any per-slide failure is recorded and the run goes on
            if raise_errors:
                raise
            msg = one_line(exc)
            tqdm.write(f"failed {entry.slide_id}: {msg}")
            outcomes.append(SlideOutcome({"slide_id": entry.slide_id, "path": str(entry.path), "status": "failed",
                                          "error": msg}))
    return outcomes


def bag_metrics(outcomes: Sequence[SlideOutcome], class_names: Sequence[str]) -> dict[str, Any]:
    """Bag AUC (positive = last class, or macro one-vs-rest) and accuracy for labelled slides."""
    from sklearn.metrics import roc_auc_score

    rows = [o.record for o in outcomes if o.record["status"] == "ok" and o.record.get("label") is not None
            and "probabilities" in o.record]
    index = {str(n): i for i, n in enumerate(class_names)}
    known = [r for r in rows if str(r["label"]) in index]
    if len({str(r["label"]) for r in known}) < 2:
        return {}
    y = np.array([index[str(r["label"])] for r in known])
    p = np.array([list(r["probabilities"].values()) for r in known])
    c = p.shape[1]
    auc = roc_auc_score(y, p[:, -1]) if c == 2 else roc_auc_score(y, p, multi_class="ovr", labels=list(range(c)))
    return {"bag_auc": float(auc), "accuracy": float((p.argmax(1) == y).mean()), "n_labelled": len(known)}


def write_batch(outcomes: Sequence[SlideOutcome], predictor: SlidePredictor, out: Path) -> dict[str, Any]:
    """Write ``predictions.csv`` and ``summary.json`` under ``out``; returns the summary."""
    with atomic_path(out / "predictions.csv") as tmp:
        pd.DataFrame([_row(o) for o in outcomes]).to_csv(tmp, index=False)
    ok = [o for o in outcomes if o.record["status"] == "ok"]
    aucs = [o.record["localization"]["instance_auc"] for o in ok
            if o.record.get("localization", {}).get("instance_auc") is not None]
    summary: dict[str, Any] = {
        "output": str(out), "checkpoint": str(predictor.checkpoint), "settings": predictor.describe(),
        "n_slides": len(outcomes), "n_ok": len(ok), "n_failed": len(outcomes) - len(ok),
        **bag_metrics(outcomes, predictor.loaded.class_names),
    }
    if aucs:
        summary["instance_auc_mean"] = float(np.mean(aucs))
    if ok:
        for part in ok[0].record["timings_s"]:
            summary[f"mean_{part}_s"] = float(np.mean([o.record["timings_s"][part] for o in ok]))
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def infer(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Run slide inference as configured (``milkit/conf/infer.yaml``); returns the batch summary."""
    opts = InferOptions.from_cfg(cfg)
    writable_dir(opts.output)
    entries, labels = discover(opts.slide, opts.extensions, opts.recursive)
    predictor = build_predictor(opts)
    single = Path(opts.slide).is_file() and Path(opts.slide).suffix.lower() != ".csv"
    outcomes = run_batch(predictor, entries, opts, labels, raise_errors=single)
    summary = write_batch(outcomes, predictor, Path(opts.output))
    shown = "  ".join(f"{k}={v:.3f}" for k, v in summary.items() if k in ("bag_auc", "accuracy", "instance_auc_mean"))
    log.info(f"[milkit] inference: {summary['n_ok']} ok, {summary['n_failed']} failed  {shown}  → {opts.output} "
             "(predictions.csv, slides/<id>/)")
    return summary
