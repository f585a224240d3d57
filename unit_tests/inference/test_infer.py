"""infer(cfg) end to end: same probabilities as the evaluation step, reuse of features, outputs, localisation."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from milkit.inference import infer
from milkit.wsi.geojson import read_geojson


def _cfg(slide: Path, ckpt: Path, out: Path, **kw) -> dict:
    return {"slide": str(slide), "checkpoint": str(ckpt), "output": str(out), "progress": False, **kw}


def _slides_csv(cohort, ids: list[str], path: Path) -> Path:
    labels = pd.read_csv(cohort.csv, dtype={"slide_id": str}).set_index("slide_id")["label"]
    pd.DataFrame({"path": [str(cohort.root / "slides" / f"{s}.tiff") for s in ids], "slide_id": ids,
                  "label": [int(labels[s]) for s in ids]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("reuse", [False, True])
def test_probabilities_match_the_evaluation_step(cohort, trained, tmp_path, reuse) -> None:
    csv = _slides_csv(cohort, trained.test_ids, tmp_path / "slides.csv")
    summary = infer(_cfg(csv, trained.checkpoint, tmp_path / "out", reuse=reuse, heatmap=False, geojson=False,
                         montage=False))
    evaluated = pd.read_csv(trained.run / "fold0" / "test_predictions.csv", dtype={"bag_id": str})
    got = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"slide_id": str}).set_index("slide_id")
    assert summary["n_ok"] == len(trained.test_ids) and (got["status"] == "ok").all()
    for row in evaluated.itertuples():
        np.testing.assert_allclose([got.loc[row.bag_id, "prob_0"], got.loc[row.bag_id, "prob_1"]],
                                   [row.prob_0, row.prob_1], atol=1e-5)
        rec = json.loads((tmp_path / "out" / "slides" / row.bag_id / "prediction.json").read_text())
        assert rec["label"] == row.label and rec["predicted_index"] == int(row.prob_1 > row.prob_0)
        if reuse:  # the training features are found through the checkpoint's record, and nothing is recomputed
            assert rec["features"]["reused_from"] == str(cohort.features.parent) and rec["timings_s"]["extraction"] == 0
        else:
            assert rec["features"]["reused_from"] is None and rec["features"]["computed"] == ["segment", "tile",
                                                                                               "extract"]


def test_outputs_json_csv_geojson_montage_and_rerun_cache(cohort, trained, tmp_path) -> None:
    sid = trained.test_ids[0]
    slide = cohort.root / "slides" / f"{sid}.tiff"
    cfg = _cfg(slide, trained.checkpoint, tmp_path, reuse=False, annotations=str(cohort.root / "annotations"),
               montage={"k": 3, "cols": 3})
    infer(cfg)
    folder = tmp_path / "slides" / sid
    rec = json.loads((folder / "prediction.json").read_text())
    assert set(rec["timings_s"]) == {"preprocessing", "extraction", "model", "rendering", "total"}
    assert rec["settings"]["target_mpp"] == 1.0 and rec["settings"]["patch_size"] == 32
    assert rec["settings"]["encoder"] == "tiny" and rec["settings"]["weights_id"] == "random:0"
    assert rec["settings"]["segmenter"]["min_object_um2"] == 5000  # the recorded segmenter, not the default
    assert abs(sum(rec["probabilities"].values()) - 1) < 1e-6 and rec["predicted_label"] in rec["class_names"]
    n = rec["num_instances"]
    tiles = json.loads((folder / "tiles.geojson").read_text())
    assert len(tiles["features"]) == n and len(read_geojson(folder / "tiles.geojson")) == n
    props = tiles["features"][0]["properties"]
    assert props["objectType"] == "tile" and set(props["measurements"]) == {"score", "rank", "annotated"}
    ring = np.array(tiles["features"][0]["geometry"]["coordinates"][0])
    assert np.ptp(ring[:, 0]) == rec["settings"]["patch_size_level0"] == 64  # level-0 px: 32 px at 2x the slide mpp
    ranks = sorted(f["properties"]["measurements"]["rank"] for f in tiles["features"])
    assert ranks[0] == 0.0 and ranks[-1] == 1.0
    montage = cv2.imread(str(folder / "montage.png"))
    assert montage.shape[1] == 3 * (32 + 8) and montage.shape[0] > 2 * (32 + 8)  # 3 top + 3 bottom, 32-px tiles
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert list(table["slide_id"]) == [sid] and {"preprocessing_s", "rendering_s", "instance_auc"} <= set(table)
    infer(cfg)  # a rerun finds its own segmentation, coordinates and features
    assert json.loads((folder / "prediction.json").read_text())["features"]["computed"] == []


def test_planted_region_gets_the_highest_scores_and_the_right_place(planted, tmp_path) -> None:
    cfg = _cfg(planted.slide, planted.checkpoint, tmp_path, reuse=False, annotations=str(planted.annotations),
               heatmap={"cmap": "gray", "alpha": 1.0}, montage={"k": 4})
    infer(cfg)
    rec = json.loads((tmp_path / "slides" / "planted" / "prediction.json").read_text())
    assert rec["localization"]["instance_auc"] > 0.97
    tiles = json.loads((tmp_path / "slides" / "planted" / "tiles.geojson").read_text())["features"]
    scores = np.array([t["properties"]["measurements"]["score"] for t in tiles])
    inside = np.array([t["properties"]["measurements"]["annotated"] for t in tiles])
    top = np.argsort(-scores)[: int(inside.sum()) // 2]
    assert inside[top].all()  # the top half of the tumour-sized set is all tumour
    # the PNG: gray colour map at full opacity, so a pixel's value is its rank-normalised score
    png = cv2.imread(str(tmp_path / "slides" / "planted" / "heatmap.png"))[..., ::-1]
    h, w = png.shape[:2]
    sx, sy = planted.scene.width / w, planted.scene.height / h
    value = png[..., 0].astype(float) / 255
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot((xx + 0.5) * sx - planted.centre[0], (yy + 0.5) * sy - planted.centre[1])
    core, far = dist < planted.radius - 64, dist > planted.radius + 64
    tissue = planted.scene.mask("tissue", (h, w))
    assert value[core].mean() > 0.9 and value[far & tissue].mean() < 0.55
    hot = (value > 0.95) & tissue  # white background would read as 1
    cx, cy = (xx[hot].mean() + 0.5) * sx, (yy[hot].mean() + 0.5) * sy
    assert np.hypot(cx - planted.centre[0], cy - planted.centre[1]) < 64  # within one patch of the disc centre
    ellipse = np.hypot(((xx + 0.5) * sx - 1024) / 900, ((yy + 0.5) * sy - 768) / 660)  # the tissue outline
    assert (png[ellipse > 1.1] >= 245).all()  # background (JPEG-white) is never coloured  # background is not coloured


def test_same_slide_id_from_another_file_is_recomputed(cohort, trained, tmp_path) -> None:
    a, b = (cohort.root / "slides" / f"{s}.tiff" for s in trained.test_ids[:2])  # same size and MPP
    for name, src in (("first", a), ("second", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.tiff").symlink_to(src)
    cfg = _cfg(tmp_path / "first" / "x.tiff", trained.checkpoint, tmp_path / "out", reuse=False, heatmap=False,
               montage=False, geojson=False)
    infer(cfg)
    infer({**cfg, "slide": str(tmp_path / "second" / "x.tiff")})
    rec = json.loads((tmp_path / "out" / "slides" / "x" / "prediction.json").read_text())
    assert rec["features"]["computed"] == ["segment", "tile", "extract"]
    evaluated = pd.read_csv(trained.run / "fold0" / "test_predictions.csv", dtype={"bag_id": str}).set_index("bag_id")
    assert rec["probabilities"]["1"] == pytest.approx(evaluated.loc[b.stem, "prob_1"], abs=1e-5)
