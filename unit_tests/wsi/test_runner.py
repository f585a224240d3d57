"""The batch runner: manifest, failures recorded, resumability, sharding, CSV input, interrupted runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from milkit.cli import CONF_DIR
from milkit.errors import ConfigError
from milkit.preprocess import preprocess, run_tag
from milkit.wsi.geojson import write_geojson
from milkit.wsi.synthetic import SyntheticScene, make_scene, write_synthetic_slide

from .conftest import undecodable_copy

pytestmark = pytest.mark.wsi  # needs OpenSlide and generated slides

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["encoder=tiny", "segmenter.seg_mpp=4.0", "segmenter.median_px=5", "segmenter.close_px=3",
             "segmenter.min_object_um2=5000", "segmenter.min_hole_um2=200", "target_mpp=1.0", "patch_size=32",
             "batch_size=16", "num_workers=0", "progress=false"]


def _cfg(input_: Path, output: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("preprocess", overrides=[f"input={input_}", f"output={output}", *OVERRIDES, *extra])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    slides, ann = root / "slides", root / "annotations"
    scene = make_scene(1536, 1536, n_tissue=2, n_tumour=1, seed=4)
    good = write_synthetic_slide(slides / "a_good.tiff", scene, mpp=0.5)
    write_geojson(ann / "a_good.geojson", scene.tumour, name="Tumor")
    write_synthetic_slide(slides / "b_good.svs", make_scene(2048, 2048, n_tumour=0, seed=5), mpp=0.25,
                          flavour="aperio")
    write_synthetic_slide(slides / "c_blank.tiff", SyntheticScene(1024, 1024), mpp=0.5)
    write_synthetic_slide(slides / "d_nompp.tiff", scene, flavour="no_mpp")
    (slides / "e_empty.tiff").write_bytes(b"")
    (slides / "f_truncated.tiff").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (slides / "g_notes.svs").write_text("not a slide\n")
    undecodable_copy(good, slides / "h_undecodable.tiff")
    (slides / "readme.txt").write_text("ignored: not a slide extension")
    return root


def _manifest(root: Path, name: str = "manifest.csv") -> pd.DataFrame:
    m = pd.read_csv(root / name).set_index("slide_id")
    return m.fillna({"error": "", "stages": ""})


def test_failures_are_recorded_and_the_run_goes_on(cohort, tmp_path):
    out = preprocess(_cfg(cohort / "slides", tmp_path, f"annotations={cohort / 'annotations'}"))
    assert out == tmp_path / run_tag(1.0, 32, 0) == tmp_path / "10x_32px_0px_overlap"
    m = _manifest(out)
    assert m["status"].to_dict() == {
        "a_good": "ok", "b_good": "ok", "c_blank": "no_tissue", "d_nompp": "failed", "e_empty": "failed",
        "f_truncated": "failed", "g_notes": "failed", "h_undecodable": "failed"}
    errors = m["error"].to_dict()
    for sid, cause in [("d_nompp", "no microns-per-pixel"), ("e_empty", "empty file"),
                       ("f_truncated", "truncated: IFD 0's image data ends at offset"), ("g_notes", "not a slide format"),
                       ("h_undecodable", "cannot read region")]:
        assert cause in errors[sid] and sid in errors[sid] and "\n" not in errors[sid], errors[sid]
    assert m.loc["a_good", "stages"] == "segment+tile+extract" and m.loc["a_good", "tiles_per_s"] > 0
    for sid in ("a_good", "b_good"):
        assert (out / "thumbnails" / f"{sid}.jpg").stat().st_size > 0
        with h5py.File(out / "features_tiny" / f"{sid}.h5") as f:
            assert f["features"].shape == (m.loc[sid, "tiles"], 64)
            assert f["coords"].attrs["patch_size_level0"] == (64 if sid == "a_good" else 128)
            assert ("instance_labels" in f) == (sid == "a_good")
            if sid == "a_good":
                assert 0 < f["instance_labels"][()].sum() < len(f["instance_labels"])
    with h5py.File(out / "patches" / "c_blank_patches.h5") as f:
        assert f["coords"].shape == (0, 2)
    assert not list(out.rglob("*.tmp"))


def test_rerun_skips_valid_outputs_and_redoes_invalid_ones(cohort, tmp_path):
    cfg = _cfg(cohort / "slides", tmp_path)
    out = preprocess(cfg)
    feats = out / "features_tiny" / "a_good.h5"
    stamp = feats.stat().st_mtime_ns
    m = _manifest(preprocess(cfg))
    assert m.loc["a_good", "status"] == m.loc["b_good", "status"] == "skipped"
    assert feats.stat().st_mtime_ns == stamp
    feats.write_bytes(b"partial garbage")  # e.g. copied from a crashed job
    m = _manifest(preprocess(cfg))
    assert m.loc["a_good", "status"] == "ok" and m.loc["a_good", "stages"] == "extract"
    # an edited tissue outline (QuPath) replaces the segmentation: re-tile and re-extract
    user = tmp_path / "edited"
    write_geojson(user / "a_good.geojson", [(np.array([[0, 0], [700, 0], [700, 700], [0, 700]], float), [])])
    m = _manifest(preprocess(_cfg(cohort / "slides", tmp_path, f"tissue_geojson={user}")))
    assert m.loc["a_good", "stages"] == "segment+tile+extract" and m.loc["b_good", "status"] == "skipped"
    assert (out / "thumbnails" / "a_good.jpg").stat().st_mtime >= (user / "a_good.geojson").stat().st_mtime
    with h5py.File(out / "patches" / "a_good_patches.h5") as f:
        coords = f["coords"][()]
        assert json.loads(f["coords"].attrs["segmenter"])["name"] == "geojson"
    assert len(coords) == m.loc["a_good", "tiles"] and coords.max() + 64 <= 764  # within the square (+ 25 %)
    m = _manifest(preprocess(_cfg(cohort / "slides", tmp_path, "min_tissue=0.9")))  # new threshold: re-tile
    assert m.loc["a_good", "stages"] == "tile+extract" and m.loc["b_good", "stages"] == "tile+extract"


def test_rerun_redoes_outputs_whose_settings_changed(cohort, tmp_path):
    cfg = _cfg(cohort / "slides", tmp_path, "stages=[segment,tile,extract]")
    out = preprocess(cfg)
    (out / "thumbnails" / "a_good.jpg").unlink()
    m = _manifest(preprocess(cfg))
    assert m.loc["a_good", "stages"] == "segment" and m.loc["b_good", "status"] == "skipped"
    assert (out / "thumbnails" / "a_good.jpg").stat().st_size > 0
    m = _manifest(preprocess(_cfg(cohort / "slides", tmp_path, "feature_dtype=float16")))
    assert m.loc["a_good", "stages"] == m.loc["b_good", "stages"] == "extract"
    with h5py.File(out / "features_tiny" / "a_good.h5") as f:
        assert f["features"].dtype == np.float16
    # an MPP override changes the geometry: re-tile and re-extract, never keep the old files
    m = _manifest(preprocess(_cfg(cohort / "slides", tmp_path, "feature_dtype=float16", "slide_mpp=0.25",
                                  "force_mpp=true")))
    assert m.loc["a_good", "stages"] == "tile+extract"
    with h5py.File(out / "patches" / "a_good_patches.h5") as f:
        assert f["coords"].attrs["level0_mpp"] == 0.25 and f["coords"].attrs["patch_size_level0"] == 128


def test_shards_split_without_overlap(cohort, tmp_path):
    seen = []
    for shard in (0, 1):
        preprocess(_cfg(cohort / "slides", tmp_path, "stages=[segment,tile]", f"shard={shard}", "num_shards=2"))
        seen.append(set(_manifest(tmp_path / "10x_32px_0px_overlap", f"manifest_shard{shard}of2.csv").index))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8
    with pytest.raises(ConfigError, match="shard"):
        preprocess(_cfg(cohort / "slides", tmp_path, "shard=2", "num_shards=2"))
    assert not (tmp_path / "10x_32px_0px_overlap" / "features_tiny").exists()  # extract stage not requested


def test_csv_input_with_ids_and_mpp(cohort, tmp_path):
    csv = tmp_path / "slides.csv"
    pd.DataFrame({"path": [str(cohort / "slides" / "a_good.tiff"), "../" + cohort.name + "/slides/d_nompp.tiff"],
                  "slide_id": ["case1", "case2"], "mpp": [None, 0.5]}).to_csv(csv, index=False)
    (tmp_path / "sub").mkdir()
    csv_sub = tmp_path / "sub" / "slides.csv"
    csv_sub.write_text(csv.read_text().replace("../" + cohort.name, str(cohort)))
    m = _manifest(preprocess(_cfg(csv_sub, tmp_path / "o", "stages=[segment,tile]")))
    assert m["status"].to_dict() == {"case1": "ok", "case2": "ok"}  # mpp column rescues the slide without MPP
    with pytest.raises(ConfigError, match="input=.*not a folder or a .csv"):
        preprocess(_cfg(tmp_path / "missing", tmp_path / "o"))


def _h5_content(path: Path) -> dict:
    out = {}
    with h5py.File(path) as f:
        for name, ds in f.items():
            out[name] = (ds[()].tobytes(), ds.dtype.str, json.dumps({k: str(v) for k, v in ds.attrs.items()}))
    return out


def test_interrupted_run_resumes_to_identical_outputs(tmp_path):
    slides = tmp_path / "slides"
    for i in range(2):
        write_synthetic_slide(slides / f"s{i}.tiff", make_scene(1024, 1024, n_tissue=2, seed=10 + i), mpp=0.5)
    extra = ["target_mpp=0.5", "patch_size=64", "batch_size=1"]  # ~100 one-tile batches per slide
    args = [f"input={slides}", f"output={tmp_path / 'run'}", *OVERRIDES, *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "preprocess.py"), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    feats = tmp_path / "run" / "20x_64px_0px_overlap" / "features_tiny"
    deadline = time.monotonic() + 120
    while not (feats.is_dir() and list(feats.glob(".s*.h5.*.tmp"))):  # mid-slide: features half written
        assert proc.poll() is None and time.monotonic() < deadline, "preprocess ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(feats.glob(".s*.h5.*.tmp"))  # the killed process left a partial temporary file behind
    resumed = preprocess(_cfg(slides, tmp_path / "run", *extra))
    clean = preprocess(_cfg(slides, tmp_path / "clean", *extra))
    assert not list(resumed.rglob("*.tmp"))
    for sub in ("patches", "features_tiny"):
        names = sorted(p.name for p in (clean / sub).iterdir())
        assert names == sorted(p.name for p in (resumed / sub).iterdir()) and len(names) == 2
        for name in names:
            assert _h5_content(resumed / sub / name) == _h5_content(clean / sub / name), name
    for name in ("s0.geojson", "s1.geojson"):
        assert (resumed / "contours_geojson" / name).read_text() == (clean / "contours_geojson" / name).read_text()


def test_every_encoder_and_segmenter_config_composes(tmp_path):
    from milkit.features.encoders import ENCODERS
    from milkit.preprocess.runner import Settings, _build
    from milkit.wsi.segment import HSVSegmenter, WholeSlideSegmenter

    names = sorted(p.stem for p in (Path(CONF_DIR) / "encoder").glob("*.yaml"))
    assert names == ENCODERS.names()
    for name in names:
        cfg = _cfg(tmp_path, tmp_path, f"encoder={name}")
        assert cfg.encoder.name == name and cfg.encoder._target_ == "milkit.features.create_encoder"
        assert Settings.from_cfg(cfg).target_mpp == 1.0
    assert _build(_cfg(tmp_path, tmp_path).encoder, None).dim == 64
    kinds = {"otsu": HSVSegmenter, "fixed": HSVSegmenter, "all": WholeSlideSegmenter}
    for seg, kind in kinds.items():
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("preprocess", overrides=["input=a", "output=b", f"segmenter={seg}"])
        assert isinstance(_build(cfg.segmenter, None), kind) and cfg.segmenter.seg_mpp == 16.0
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("preprocess")
    assert cfg.encoder.name == "resnet50_trunc" and cfg.min_tissue == 0.25 and cfg.target_mpp == 0.5
    with pytest.raises(ConfigError, match="input is required"):
        Settings.from_cfg(cfg)
    with pytest.raises(ConfigError, match="stages: unknown embed"):
        Settings.from_cfg({"input": "a", "output": "b", "stages": ["embed"]})
