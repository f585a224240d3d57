"""One slide end to end: features (reused or computed) → prediction → heatmap, tiles GeoJSON, montage → JSON.

Timings are split as the issue asks: ``preprocessing`` (open, segment, tile, or the reuse check),
``extraction`` (patch encoder), ``model`` (MIL forward) and ``rendering`` (heatmap, GeoJSON, montage).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from milkit.inference.export import montage, write_tiles_geojson
from milkit.inference.heatmap import rank_normalise, render_heatmap, write_png
from milkit.inference.options import InferOptions
from milkit.inference.predictor import Prediction, SlidePredictor
from milkit.preprocess.slides import SlideEntry
from milkit.utils.io import atomic_path
from milkit.wsi.geojson import read_geojson
from milkit.wsi.readers import SlideReader, open_slide
from milkit.wsi.tiling import PatchGeometry, plan_geometry, polygon_fractions

__all__ = ["SlideOutcome", "run_slide", "instance_labels"]


@dataclass
class SlideOutcome:
    record: dict[str, Any]               # what prediction.json holds
    scores: np.ndarray | None = None     # (N,) raw instance scores
    instance_labels: np.ndarray | None = None  # (N,) 1 = inside the annotation, when annotations were given


def instance_labels(annotation: Path, coords: np.ndarray, geom: PatchGeometry, min_fraction: float) -> np.ndarray:
    """1 for patches whose box is at least ``min_fraction`` covered by the annotation polygons, else 0."""
    dims = (geom.level0_width, geom.level0_height)
    frac = polygon_fractions(read_geojson(annotation), coords, geom.patch_size_level0, dims)
    return (frac >= min_fraction).astype(np.int64)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if labels.min() == labels.max():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _render(reader: SlideReader, pred: Prediction, geom: PatchGeometry, tissue: Path | None, opts: InferOptions,
            folder: Path, labels: np.ndarray | None, meta: dict[str, Any]) -> dict[str, str]:
    coords, scores, out = pred.bag.coords, pred.scores, {}
    size0 = geom.patch_size_level0
    hm = opts.heatmap
    if hm.enabled:
        polygons = read_geojson(tissue) if tissue is not None and tissue.is_file() else None
        image = render_heatmap(reader, coords, size0, scores, polygons, max_size=hm.max_size, vis_mpp=hm.vis_mpp,
                               patch_px=hm.patch_px, cmap=hm.cmap, alpha=hm.alpha, tissue_only=hm.tissue_only)
        out["heatmap"] = str(write_png(folder / "heatmap.png", image.image))
        meta = {**meta, "heatmap_scale": list(image.scale), "heatmap_mpp": image.mpp}
    if opts.geojson:
        measures = {"score": scores, "rank": rank_normalise(scores)}
        if labels is not None:
            measures["annotated"] = labels
        out["tiles_geojson"] = str(write_tiles_geojson(folder / "tiles.geojson", coords, size0, measures, meta))
    if opts.montage.enabled:
        img = montage(reader, coords, scores, geom.read_level, geom.read_size, geom.patch_size, opts.montage.k,
                      opts.montage.cols)
        out["montage"] = str(write_png(folder / "montage.png", img))
    return out


def run_slide(predictor: SlidePredictor, entry: SlideEntry, opts: InferOptions, label: Any = None,
              progress: Any = None) -> SlideOutcome:
    """Predict one slide and write ``<output>/slides/<slide_id>/{prediction.json, heatmap.png, ...}``."""
    t0 = time.perf_counter()
    out_root = Path(opts.output)
    folder = out_root / "slides" / entry.slide_id
    sid = entry.slide_id
    user_tissue = Path(opts.tissue_geojson) / f"{sid}.geojson" if opts.tissue_geojson else None
    annotation = Path(opts.annotations) / f"{sid}.geojson" if opts.annotations else None
    st = predictor.settings
    with open_slide(entry.path, opts.reader, mpp=entry.mpp or opts.slide_mpp, force_mpp=opts.force_mpp) as reader:
        open_s = time.perf_counter() - t0
        prep = predictor.prepare(reader, sid, out_root / "preprocessed",
                                 user_tissue if user_tissue is not None and user_tissue.is_file() else None, progress)
        pred = predictor.predict(prep.features, sid)
        geom = plan_geometry(reader, st.target_mpp, st.patch_size, st.overlap)
        labels = None
        if annotation is not None and annotation.is_file():
            labels = instance_labels(annotation, pred.bag.coords, geom, opts.label_min_fraction)
        names = predictor.loaded.class_names or [str(i) for i in range(len(pred.probs))]
        meta = {"slide_id": sid, "checkpoint": str(predictor.checkpoint), "class_names": names}
        t1 = time.perf_counter()
        outputs = {} if pred.scores is None else _render(reader, pred, geom, prep.tissue, opts, folder, labels, meta)
        render_s = time.perf_counter() - t1
        slide_info = {"reader": reader.name, "level0_dimensions": list(reader.dimensions), "level0_mpp": reader.mpp,
                      "mpp_source": reader.mpp_result.source, "read_level": geom.read_level,
                      "read_downsample": geom.read_downsample, "patch_size_level0": geom.patch_size_level0}
    record: dict[str, Any] = {
        "slide_id": sid, "path": str(entry.path), "status": "ok", "checkpoint": str(predictor.checkpoint),
        "model": predictor.loaded.cfg.get("model", {}).get("model_name"), **_task_fields(pred, predictor, names),
        "label": label, "num_instances": int(len(pred.bag.features)),
        "instance_scores": pred.scores is not None,
        "settings": {**predictor.describe(), **slide_info},
        "features": {"path": str(prep.features), "reused_from": prep.reused_from, "computed": list(prep.computed)},
        "timings_s": {"preprocessing": open_s + prep.preprocessing_s, "extraction": prep.extraction_s,
                      "model": pred.model_s, "rendering": render_s, "total": time.perf_counter() - t0},
        "outputs": outputs,
    }
    if labels is not None:
        auc = _auc(labels, pred.scores) if pred.scores is not None else None
        record["localization"] = {"annotation": str(annotation), "instance_auc": auc,
                                  "n_positive": int(labels.sum()), "n_negative": int((labels == 0).sum())}
    with atomic_path(folder / "prediction.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=_jsonable))
    return SlideOutcome(record, pred.scores, labels)


def _task_fields(pred: Any, predictor: SlidePredictor, names: list[str]) -> dict[str, Any]:
    """Classification: probabilities and the predicted class; survival: risk and the survival curve per bin."""
    if not len(pred.probs):
        task = predictor.loaded.task
        return {"task": task.name, "risk": float(pred.extras["risk"]),
                **({"survival_per_bin": pred.extras["survival"].tolist(), "bin_inner_edges": task.state().get(
                    "inner_edges")} if "survival" in pred.extras else {})}
    k = int(np.argmax(pred.probs))
    return {"class_names": names, "probabilities": {n: float(p) for n, p in zip(names, pred.probs)},
            "predicted_label": names[k], "predicted_index": k}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    return str(obj)
