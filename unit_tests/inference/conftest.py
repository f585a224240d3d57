"""Small slides, a trained checkpoint and a linear-probe checkpoint shared by the inference tests.

* ``cohort``: 6 synthetic slides (1024 × 768 px at 0.5 µm/px) with planted tumours, preprocessed with the
  tiny encoder at 1 µm/px, 32-px patches; ``trained``: one fold of ``train(cfg)`` on it (a real checkpoint
  and the evaluation step's ``test_predictions.csv``).
* ``planted``: one 2048 × 1536 slide with a single tumour disc at a known place, and a checkpoint whose
  instance scores are a linear probe (LDA direction) of the tiny encoder's features: its heatmap must put
  the highest scores on the disc.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from milkit.cli import CONF_DIR
from milkit.data.feature_files import read_feature_file
from milkit.data.sources import FeatureDirSource
from milkit.inference.packaging import save_model_checkpoint
from milkit.models import create_model
from milkit.preprocess import preprocess
from milkit.wsi.geojson import write_geojson
from milkit.wsi.synthetic import SyntheticScene, write_synthetic_cohort, write_synthetic_slide

TINY = {"_target_": "milkit.features.create_encoder", "name": "tiny"}
# object/hole limits scaled down for millimetre-sized slides (the defaults drop anything under 0.05 mm²)
SEGMENTER = {"_target_": "milkit.wsi.create_segmenter", "name": "hsv", "seg_mpp": 4.0, "min_object_um2": 5000,
             "min_hole_um2": 5000}


def run_preprocess(slides: Path, out: Path, annotations: Path, target_mpp: float, patch_size: int) -> Path:
    return preprocess({"input": str(slides), "output": str(out), "target_mpp": target_mpp, "patch_size": patch_size,
                       "annotations": str(annotations), "num_workers": 0, "device": "cpu", "progress": False,
                       "encoder": TINY, "segmenter": SEGMENTER}) / "features_tiny"


@dataclass
class Cohort:
    root: Path
    csv: Path
    features: Path      # <pre>/<tag>/features_tiny


@dataclass
class Trained:
    run: Path
    checkpoint: Path
    test_ids: list[str]


@dataclass
class Planted:
    slide: Path
    scene: SyntheticScene
    centre: tuple[float, float]   # tumour disc, level-0 px
    radius: float
    annotations: Path
    checkpoint: Path
    features: Path


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    root = tmp_path_factory.mktemp("infer_cohort")
    csv = write_synthetic_cohort(root, n_slides=6, width=1024, height=768, mpp=0.5, seed=3)
    feats = run_preprocess(root / "slides", root / "pre", root / "annotations", target_mpp=1.0, patch_size=32)
    return Cohort(root, csv, feats)


def train_small_abmil(features: Path, cohort_csv: Path, out: Path, *overrides: str) -> Trained:
    """One fold of ``train(cfg)`` (a 16-wide ABMIL, 2 epochs) on a preprocessed feature folder."""
    import pandas as pd

    from milkit.training.train import train

    overrides = ("data=features", f"data.source.feature_dir={features}", f"data.source.cohort_csv={cohort_csv}",
                 "data.in_dim=64", "data.standardize=true", "data.num_workers=0", "model=abmil",
                 "model.embed_dims=[16]", "model.attn_dim=8", "trainer.max_epochs=2", "trainer.min_epochs=1",
                 "cv.folds=3", "cv.run_folds=[0]", "logger=none", *overrides)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir, cfg.paths.root_dir = str(out), str(out / "logs"), str(out)
    summary = train(cfg)
    preds = pd.read_csv(out / "fold0" / "test_predictions.csv", dtype={"bag_id": str})
    return Trained(out, Path(summary["folds"][0]["checkpoint"]), preds["bag_id"].tolist())


@pytest.fixture(scope="session")
def trained(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train_small_abmil(cohort.features, cohort.csv, tmp_path_factory.mktemp("infer_run"))


def _disc(cx: float, cy: float, rx: float, ry: float, n: int = 128) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def linear_probe_checkpoint(path: Path, features_dir: Path, cohort_csv: Path, in_dim: int | None = None) -> Path:
    """mi-Net without hidden layers whose last-class instance logit is the LDA direction between the
    annotated and the other patches of ``features_dir`` (a model with known, learned-free localisation)."""
    source = FeatureDirSource(features_dir, cohort_csv)
    ff = read_feature_file(source.path(source.records["bag_id"].iloc[0]))
    x, y = torch.from_numpy(ff.features).double(), torch.from_numpy(ff.instance_labels)
    mu1, mu0 = x[y == 1].mean(0), x[y == 0].mean(0)
    cov = torch.cov(x.T) + 1e-3 * torch.eye(x.shape[1], dtype=x.dtype)
    d = torch.linalg.solve(cov, mu1 - mu0)
    d = d / (x @ d).std()
    dim = in_dim or x.shape[1]
    cfg = {"_target_": "milkit.models.create_model", "model_name": "mi_net", "in_dim": dim, "num_classes": 2,
           "embed_dims": [], "dropout": 0.0}
    model = create_model("mi_net", dim, 2, embed_dims=[], dropout=0.0)
    with torch.no_grad():
        w = d[:dim].float()
        model.instance_head.weight.copy_(torch.stack([-w, w]))
        model.instance_head.bias.copy_(torch.tensor([0.0, -float(((mu1 + mu0) / 2)[:dim].float() @ w)]))
    return save_model_checkpoint(path, model, cfg, ["0", "1"], source.feature_meta())


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    root = tmp_path_factory.mktemp("planted")
    centre, radius = (1400.0, 560.0), 260.0
    scene = SyntheticScene(2048, 1536, tissue=[(_disc(1024, 768, 900, 660), [])],
                           tumour=[(_disc(*centre, radius, radius), [])], seed=5)
    slide = write_synthetic_slide(root / "slides" / "planted.tiff", scene, mpp=0.5)
    write_geojson(root / "annotations" / "planted.geojson", scene.tumour, name="Tumor")
    (root / "cohort.csv").write_text("slide_id,case_id,label\nplanted,c0,1\n")
    feats = run_preprocess(root / "slides", root / "pre", root / "annotations", target_mpp=0.5, patch_size=64)
    ckpt = linear_probe_checkpoint(root / "probe.ckpt", feats, root / "cohort.csv")
    return Planted(slide, scene, centre, radius, root / "annotations", ckpt, feats)
