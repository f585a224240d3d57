"""Clear one-line errors: encoder weights missing or mismatched, feature dimension ≠ encoder, unreadable slide,
unwritable output, full disk."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from milkit.cli import run_safely
from milkit.errors import ConfigError, DataError, MILKitError, OutputError
from milkit.features.encoders import create_encoder
from milkit.features.weights import file_sha256
from milkit.inference import SlidePredictor, infer
from milkit.utils.io import atomic_path

from .conftest import linear_probe_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def local_weights(trained, tmp_path_factory) -> dict[str, Path]:
    """Two tiny-encoder weight files and a copy of the trained checkpoint whose features claim file A."""
    root = tmp_path_factory.mktemp("weights")
    files = {}
    for name, seed in (("a", 1), ("b", 2)):
        files[name] = root / f"tiny_{name}.pth"
        torch.save(create_encoder("tiny", weights="random", seed=seed).model.state_dict(), files[name])
    ckpt = torch.load(trained.checkpoint, weights_only=False)
    ckpt["milkit"]["feature_meta"]["weights_hash"] = f"sha256:{file_sha256(files['a'])}"
    files["ckpt"] = root / "local_weights.ckpt"
    torch.save(ckpt, files["ckpt"])
    return files


def test_missing_encoder_weights(local_weights) -> None:
    with pytest.raises(ConfigError) as exc:
        SlidePredictor(local_weights["ckpt"])
    assert "local weights (sha256" in _one_line(exc) and "set encoder.weights=" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        SlidePredictor(local_weights["ckpt"], weights=str(local_weights["a"].with_name("gone.pth")))
    assert "gone.pth not found" in _one_line(exc)


def test_mismatched_encoder_weights(local_weights, trained) -> None:
    with pytest.raises(ConfigError) as exc:
        SlidePredictor(local_weights["ckpt"], weights=str(local_weights["b"]))
    assert "differ from those the training features were made with" in _one_line(exc)
    with pytest.raises(ConfigError, match="differ from those"):  # random:0 features, a weights file given
        SlidePredictor(trained.checkpoint, weights=str(local_weights["a"]))
    predictor = SlidePredictor(local_weights["ckpt"], weights=str(local_weights["a"]))  # the right file
    assert predictor.encoder.weights_id == f"sha256:{file_sha256(local_weights['a'])}"
    forced = SlidePredictor(local_weights["ckpt"], weights=str(local_weights["b"]), verify_weights=False)
    assert forced.encoder.weights_id != predictor.encoder.weights_id


def test_checkpoint_feature_dim_differs_from_encoder(planted, tmp_path) -> None:
    ckpt = linear_probe_checkpoint(tmp_path / "d32.ckpt", planted.features, planted.features.parents[2] / "cohort.csv",
                                   in_dim=32)
    with pytest.raises(ConfigError) as exc:
        SlidePredictor(ckpt)
    assert "model takes 32-d features but encoder 'tiny' gives 64-d" in _one_line(exc)


def test_checkpoint_without_preprocessing_record(trained, tmp_path) -> None:
    ckpt = torch.load(trained.checkpoint, weights_only=False)
    ckpt["milkit"]["feature_meta"] = {}
    torch.save(ckpt, tmp_path / "bare.ckpt")
    with pytest.raises(ConfigError) as exc:
        SlidePredictor(tmp_path / "bare.ckpt")
    assert "does not record 'target_mpp'" in _one_line(exc)
    predictor = SlidePredictor(tmp_path / "bare.ckpt", {"target_mpp": 1.0, "patch_size": 32, "encoder": "tiny"})
    assert any("segmenter not recorded" in n for n in predictor.settings.notes)


def test_unreadable_slide_single_and_in_a_batch(cohort, trained, tmp_path) -> None:
    bad = tmp_path / "slides" / "broken.svs"
    bad.parent.mkdir()
    bad.write_text("not a slide\n")
    cfg = {"slide": str(bad), "checkpoint": str(trained.checkpoint), "output": str(tmp_path / "one"), "progress": False}
    with pytest.raises(DataError) as exc:
        infer(cfg)
    assert str(bad) in _one_line(exc)
    good = cohort.root / "slides" / f"{trained.test_ids[0]}.tiff"
    (bad.parent / good.name).symlink_to(good)
    summary = infer({**cfg, "slide": str(bad.parent), "output": str(tmp_path / "batch"), "heatmap": False,
                     "montage": False, "geojson": False})
    table = pd.read_csv(tmp_path / "batch" / "predictions.csv").set_index("slide_id")
    assert summary["n_ok"] == 1 and summary["n_failed"] == 1
    assert table.loc["broken", "status"] == "failed" and str(bad) in table.loc["broken", "error"]
    assert table.loc[good.stem, "status"] == "ok"


def test_cli_prints_one_line_and_exits_2(trained, tmp_path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "infer_slide.py"), f"slide={bad}",
                          f"checkpoint={trained.checkpoint}", f"output={tmp_path / 'out'}"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("milkit: error:")]
    assert lines == [f"milkit: error: {bad}: empty file (0 bytes)"]


def test_errors_are_milkit_errors() -> None:
    assert issubclass(ConfigError, MILKitError) and issubclass(DataError, MILKitError)


def test_infer_yaml_and_options_agree() -> None:
    from hydra import compose, initialize_config_dir

    from milkit.cli import CONF_DIR
    from milkit.inference import InferOptions

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="infer", overrides=["slide=s", "checkpoint=c", "output=o"])
    assert InferOptions.from_cfg(cfg) == InferOptions(slide="s", checkpoint="c", output="o")  # same defaults
    with pytest.raises(ConfigError, match="unknown option\\(s\\) heatmap.opacity"):
        InferOptions.from_cfg({"slide": "s", "checkpoint": "c", "output": "o", "heatmap": {"opacity": 1}})
    with pytest.raises(ConfigError, match="checkpoint is required"):
        InferOptions.from_cfg({"slide": "s", "output": "o"})


def test_output_under_a_regular_file(trained, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputError) as exc:
        infer({"slide": str(tmp_path), "checkpoint": str(trained.checkpoint), "output": str(blocker / "out")})
    assert _one_line(exc) == f"output {blocker}/out: cannot create a folder there ({blocker} is a file, not a folder)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "infer_slide.py"), f"slide={tmp_path}",
                          f"checkpoint={trained.checkpoint}", f"output={blocker}/out"],
                         capture_output=True, text=True, env=env, timeout=120)
    (line,) = res.stderr.strip().splitlines()  # Hydra's run folder <output>/.hydra/... is checked first
    assert res.returncode == 2 and line.startswith(f"milkit: error: run folder (hydra.run.dir) {blocker}/out/.hydra/")
    assert blocker.read_text() == ""


def test_full_disk_fails_the_slide_then_stops_at_the_summary(cohort, trained, tmp_path, monkeypatch, capsys) -> None:
    @contextlib.contextmanager
    def write_fails(path):  # ENOSPC at the final flush, after the writer has written
        with atomic_path(path) as tmp:
            yield tmp
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / f"{trained.test_ids[0]}.tiff").symlink_to(cohort.root / "slides" / f"{trained.test_ids[0]}.tiff")
    cfg = {"slide": str(slides), "checkpoint": str(trained.checkpoint), "output": str(tmp_path / "out"),
           "heatmap": False, "montage": False, "geojson": False, "progress": False}
    monkeypatch.setattr("milkit.inference.slide.atomic_path", write_fails)
    infer(cfg)
    row = pd.read_csv(tmp_path / "out" / "predictions.csv").iloc[0]
    prediction = tmp_path / "out" / "slides" / trained.test_ids[0] / "prediction.json"
    assert row["status"] == "failed" and row["error"] == f"{prediction}: no space left on device"
    assert not prediction.exists() and not list(prediction.parent.glob("*.tmp"))
    monkeypatch.setattr("milkit.inference.run.atomic_path", write_fails)
    with pytest.raises(SystemExit) as info:
        run_safely(infer, OmegaConf.create({**cfg, "output": str(tmp_path / "out2")}))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"milkit: error: {tmp_path / 'out2' / 'predictions.csv'}: no space left on device"]
    assert not list((tmp_path / "out2").glob("*.csv")) and not list((tmp_path / "out2").glob(".*.tmp"))
