"""A cohort in shards: shard index from the config or a SLURM array, merged manifest, rerun of failed shards, and
a real 2-shard sweep through submitit's local executor."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from milkit.cli import CONF_DIR
from milkit.errors import ConfigError
from milkit.preprocess import preprocess
from milkit.preprocess.cohort import resolve_shard
from milkit.wsi.synthetic import make_scene, write_synthetic_slide

pytestmark = pytest.mark.wsi

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["stages=[segment,tile]", "segmenter.seg_mpp=4.0", "segmenter.median_px=5", "segmenter.close_px=3",
             "segmenter.min_object_um2=5000", "segmenter.min_hole_um2=200", "target_mpp=2.0", "patch_size=32",
             "progress=false"]
TAG = "5x_32px_0px_overlap"


def _cfg(input_: Path, output: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("preprocess", overrides=[f"input={input_}", f"output={output}", *OVERRIDES, *extra])


@pytest.fixture
def slides(tmp_path: Path) -> Path:
    """Five slides; ``c_broken`` (an empty file, shard 0 of 2) fails until it is replaced."""
    root = tmp_path / "slides"
    for i, sid in enumerate(["a", "b", "d", "e"]):
        write_synthetic_slide(root / f"{sid}.tiff", make_scene(768, 768, n_tissue=1, n_tumour=0, seed=i), mpp=0.5)
    (root / "c_broken.tiff").write_bytes(b"")
    return root


def _manifest(out: Path, name: str = "manifest.csv") -> pd.DataFrame:
    return pd.read_csv(out / TAG / name, dtype={"slide_id": str}).set_index("slide_id")


@pytest.mark.parametrize("shard, num_shards, multirun, env, expected", [
    (None, None, False, {}, (0, 1)),
    (2, 4, False, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8"}, (2, 4)),   # the config wins
    (None, None, False, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, (3, 8)),
    (None, 16, False, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"}, (7, 16)),  # --array=3,7 rerun
    (None, None, True, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, (0, 1)),  # a Hydra sweep job
])
def test_shard_index_from_config_or_slurm_array(shard, num_shards, multirun, env, expected) -> None:
    assert resolve_shard(shard, num_shards, multirun, env) == expected


@pytest.mark.parametrize("shard, num_shards, env, match", [
    (None, None, {"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT"),
    (None, None, {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "8"}, "0-based"),
    (None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "8"}, "not an integer"),
    (2, 2, {}, "shard=2 num_shards=2"),
])
def test_bad_shard_settings_are_config_errors(shard, num_shards, env, match) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_shard(shard, num_shards, False, env)


def test_slurm_array_shards_merge_and_rerun_of_the_failed_shard(slides: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    preprocess(_cfg(slides, out))
    assert sorted(_manifest(out, "manifest_shard1of2.csv").index) == ["b", "d"]
    merged = _manifest(out)  # shard 0 has not run: its slides are pending
    assert list(merged.index) == ["a", "b", "c_broken", "d", "e"]
    assert merged["status"].to_dict() == {"a": "pending", "b": "ok", "c_broken": "pending", "d": "ok", "e": "pending"}
    assert merged["shard"].tolist() == [0, 1, 0, 1, 0]

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    preprocess(_cfg(slides, out))  # the last shard to end writes the complete manifest
    merged = _manifest(out)
    assert merged["status"].to_dict() == {"a": "ok", "b": "ok", "c_broken": "failed", "d": "ok", "e": "ok"}
    assert isinstance(merged.loc["c_broken", "error"], str) and merged.loc["c_broken", "error"].strip()
    assert (merged["tiles"].drop("c_broken") > 0).all()

    # the slide is fixed; rerunning only the shard with failures (sbatch --array=0) completes the cohort
    write_synthetic_slide(slides / "c_broken.tiff", make_scene(768, 768, n_tissue=1, seed=9), mpp=0.5)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    preprocess(_cfg(slides, out, "shard=0", "num_shards=2"))
    merged = _manifest(out)
    assert merged["status"].to_dict() == {"a": "skipped", "b": "ok", "c_broken": "ok", "d": "ok", "e": "skipped"}
    # an explicit merge (stages=[merge]) gives the same table
    (out / TAG / "manifest.csv").unlink()
    preprocess(_cfg(slides, out, "num_shards=2", "stages=[merge]"))
    assert _manifest(out).equals(merged)


@pytest.mark.slow  # about 60 s: two fresh processes importing torch (the training sweep test stays in CI)
def test_submitit_local_two_shard_sweep(slides: Path, tmp_path: Path) -> None:
    """``-m shard=0,1`` through submitit's local executor: two jobs, two shard manifests, one merged manifest."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), "-m",
                          "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", f"input={slides}",
                          f"output={out}", *OVERRIDES, "num_shards=2", "shard=range(2)"],
                         capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Submitit 'local' sweep" in res.stdout + res.stderr
    assert sorted(p.name for p in (out / TAG).glob("manifest_shard*")) == ["manifest_shard0of2.csv",
                                                                         "manifest_shard1of2.csv"]
    merged = _manifest(out)
    assert merged["status"].to_dict() == {"a": "ok", "b": "ok", "c_broken": "failed", "d": "ok", "e": "ok"}
    assert len(list((out / ".hydra").glob("multirun_*/.submitit/*"))) >= 2  # submitit's job folders
