"""experiment=demo_wsi on a miniature cohort: the hooks generate, preprocess, and evaluate held-out slides."""
from __future__ import annotations

import json

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from milkit.cli import CONF_DIR
from milkit.training.train import train


def test_demo_wsi_hooks_end_to_end(tmp_path) -> None:
    root = tmp_path / "demo"
    overrides = ["experiment=demo_wsi", f"demo.root={root}", "demo.n_slides=6", "demo.width=1024", "demo.height=768",
                 "++demo.segmenter.seg_mpp=4", "++demo.segmenter.min_object_um2=5000",
                 "++demo.segmenter.min_hole_um2=5000", "demo.patch_size=32", "cv.folds=3", "cv.run_folds=[0]",
                 "trainer.max_epochs=2", "trainer.min_epochs=1", "logger=none"]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = cfg.paths.root_dir = str(tmp_path)
    summary = train(cfg)
    assert cfg.data.source.feature_dir == str(root / "preprocessed" / "10x_32px_0px_overlap" / "features_tiny")
    result = json.loads((tmp_path / "run" / "demo_results.json").read_text())
    assert summary["after"] == result and result["n_test_slides"] == 2 and result["n_failed"] == 0
    assert result["max_prob_diff_vs_test_step"] < 1e-5  # inference from the slide files = the evaluation step
    assert set(result["mean_timings_s"]) == {"preprocessing", "extraction", "model", "rendering", "total"}
    # one tumour and one normal held-out slide: both scores are defined (values depend on 2 training epochs)
    assert 0.0 <= result["bag_auc"] <= 1.0 and result["n_slides_with_tumour"] == 1
    assert 0.0 <= result["instance_auc_pooled"] <= 1.0 and result["instance_auc_mean"] is not None
    slides = list((tmp_path / "run" / "inference" / "fold0" / "slides").iterdir())
    assert len(slides) == 2 and all((s / "heatmap.png").is_file() for s in slides)
    assert (root / "cohort.json").is_file() and len(list((root / "slides").glob("*.tiff"))) == 6
