"""Hooks of ``experiment=demo_wsi``: synthetic slides → features → (training) → inference on held-out slides.

``prepare_demo`` (``hooks.before``) writes a cohort of pyramidal TIFFs with planted "tumour" regions
(``milkit.wsi.synthetic``: denser, darker nuclei on a more purple stroma, so the tiny random encoder's
features separate them) and their annotations, preprocesses it with the demo's encoder, and points
``data.source.feature_dir`` at the result. Both steps reuse their outputs on a rerun (the cohort when its
parameters are unchanged, the preprocessing through its own validation).

``evaluate_demo`` (``hooks.after``) runs slide inference with each fold's best checkpoint on that fold's test
slides, straight from the slide files (``demo.reuse_features=false``: segmentation, tiling and extraction
are redone), and reports the bag AUC over all held-out slides, the instance-level AUC of the heatmap scores
against the planted regions (mean over positive slides, and pooled over every held-out patch), the largest
difference from the probabilities of the training run's own test step, and the per-slide timings.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from milkit.inference.options import InferOptions
from milkit.inference.run import bag_metrics, build_predictor, run_batch, write_batch
from milkit.inference.slide import SlideOutcome
from milkit.preprocess.slides import SlideEntry
from milkit.utils.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["prepare_demo", "evaluate_demo"]

_COHORT_KEYS = ("n_slides", "width", "height", "slide_mpp", "positive_fraction", "seed")


def _cohort(d: DictConfig) -> Path:
    from milkit.wsi.synthetic import write_synthetic_cohort

    root = Path(d.root)
    params = {k: d[k] for k in _COHORT_KEYS}
    marker = root / "cohort.json"
    if marker.is_file() and json.loads(marker.read_text()) == params and (root / "cohort.csv").is_file():
        return root
    for sub in ("slides", "annotations", "preprocessed"):
        shutil.rmtree(root / sub, ignore_errors=True)
    write_synthetic_cohort(root, n_slides=d.n_slides, width=d.width, height=d.height, mpp=d.slide_mpp,
                           positive_fraction=d.positive_fraction, seed=d.seed)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(params))
    return root


def prepare_demo(cfg: DictConfig) -> None:
    """Generate (or reuse) the synthetic cohort and its features; set ``data.source.feature_dir``."""
    from milkit.preprocess import preprocess

    d = cfg.demo
    root = _cohort(d)
    pre = {"input": str(root / "slides"), "output": str(root / "preprocessed"), "target_mpp": d.target_mpp,
           "patch_size": d.patch_size, "annotations": str(root / "annotations"), "num_workers": 0,
           "device": "cpu", "progress": False,
           "encoder": {"_target_": "milkit.features.create_encoder", "name": d.encoder},
           "segmenter": OmegaConf.to_container(d.segmenter, resolve=True)}
    out = preprocess(pre)
    with open_dict(cfg):
        cfg.data.source.feature_dir = str(out / f"features_{d.encoder}")


def _fold_split(out: Path, fold_name: str) -> tuple[pd.DataFrame, int]:
    tag, _, k = fold_name.rpartition("fold")
    return pd.read_csv(out / f"{tag}splits.csv", dtype={"bag_id": str}), int(k)


def _pooled_auc(outcomes: list[SlideOutcome]) -> float | None:
    from sklearn.metrics import roc_auc_score

    pairs = [(o.instance_labels, o.scores) for o in outcomes if o.scores is not None and o.instance_labels is not None]
    if not pairs:
        return None
    y, s = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def evaluate_demo(cfg: DictConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Slide inference on every fold's held-out slides; writes and returns ``demo_results.json``'s content."""
    d = cfg.demo
    out, root = Path(cfg.paths.output_dir), Path(d.root)
    cohort = pd.read_csv(root / "cohort.csv", dtype={"slide_id": str})
    labels = dict(zip(cohort["slide_id"], cohort["label"].astype(int)))
    outcomes: list[SlideOutcome] = []
    diffs: list[float] = []
    class_names: list[str] = []
    for row in summary["folds"]:
        if not row.get("checkpoint"):
            continue
        splits, k = _fold_split(out, row["fold"])
        test = splits.loc[(splits["fold"] == k) & (splits["split"] == "test"), "bag_id"].tolist()
        opts = InferOptions(slide=str(root / "slides"), checkpoint=row["checkpoint"],
                            output=str(out / "inference" / row["fold"]), reuse=bool(d.reuse_features),
                            annotations=str(root / "annotations"), num_workers=0, device="cpu", progress=False)
        predictor = build_predictor(opts)
        class_names = predictor.loaded.class_names
        fold_out = run_batch(predictor, [SlideEntry(s, root / "slides" / f"{s}.tiff") for s in test], opts, labels)
        write_batch(fold_out, predictor, Path(opts.output))
        evaluated = pd.read_csv(out / row["fold"] / "test_predictions.csv", dtype={"bag_id": str}).set_index("bag_id")
        for o in fold_out:
            if o.record["status"] == "ok" and o.record["slide_id"] in evaluated.index:
                ev = evaluated.loc[o.record["slide_id"], [f"prob_{i}" for i in range(len(class_names))]]
                got = np.array(list(o.record["probabilities"].values()))
                diffs.append(float(np.abs(ev.to_numpy(float) - got).max()))
        outcomes += fold_out
    ok = [o for o in outcomes if o.record["status"] == "ok"]
    per_slide = [o.record["localization"]["instance_auc"] for o in ok
                 if o.record.get("localization", {}).get("instance_auc") is not None]
    result: dict[str, Any] = {
        "n_test_slides": len(outcomes), "n_failed": len(outcomes) - len(ok), **bag_metrics(outcomes, class_names),
        "instance_auc_mean": float(np.mean(per_slide)) if per_slide else None,
        "instance_auc_pooled": _pooled_auc(ok), "n_slides_with_tumour": len(per_slide),
        "max_prob_diff_vs_test_step": max(diffs) if diffs else None,
        "mean_timings_s": {p: float(np.mean([o.record["timings_s"][p] for o in ok])) for p in
                           (ok[0].record["timings_s"] if ok else {})},
        "inference_dir": str(out / "inference"),
    }
    with atomic_path(out / "demo_results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    t = result["mean_timings_s"]
    log.info(f"[milkit] demo_wsi on {len(ok)} held-out slides: bag AUC={result.get('bag_auc', float('nan')):.3f}  "
             f"instance AUC mean={result['instance_auc_mean'] or float('nan'):.3f} "
             f"pooled={result['instance_auc_pooled'] or float('nan'):.3f}  "
             f"max |p - test step|={result['max_prob_diff_vs_test_step'] or 0.0:.1e}")
    if t:
        log.info("[milkit] per slide: " + "  ".join(f"{k}={v:.2f}s" for k, v in t.items()))
    log.info(f"[milkit] heatmaps, GeoJSONs, montages: {out / 'inference'}/fold*/slides/<id>/  (demo_results.json)")
    return result
