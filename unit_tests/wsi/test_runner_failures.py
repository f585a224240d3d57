"""Preprocessing on a full disk, into an unwritable folder, from an empty slide CSV, and stopped with Ctrl-C:
one line (or one manifest entry per slide), a defined exit status, no temporary or half-written file left."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from milkit.cli import run_safely
from milkit.preprocess import preprocess, run_tag
from milkit.utils.io import atomic_path
from milkit.wsi.synthetic import make_scene, write_synthetic_slide

from unit_tests.lost_signal import RaisesSignalWhenDeleted, ctrl_c_acts
from unit_tests.small_disk import small_tmpfs

from .test_runner import OVERRIDES, REPO, _cfg

pytestmark = pytest.mark.wsi
EXTRA = ["target_mpp=0.5", "patch_size=64"]
TAG = run_tag(0.5, 64, 0)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full_disk_slides")
    for i in range(3):
        write_synthetic_slide(root / f"s{i}.tiff", make_scene(1024, 1024, n_tissue=2, seed=10 + i), mpp=0.5)
    return root


def _exit_line(cfg, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        run_safely(preprocess, cfg)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return info.value.code, lines[0]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_full_disk_fails_each_slide_then_stops_when_the_manifest_cannot_be_written(slides, tmp_path, monkeypatch,
                                                                                     capsys) -> None:
    out = tmp_path / "out"
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",  # the disk fills up: room for geojson and thumbnails, not for HDF5
                        lambda p: real_usage(p)._replace(free=50_000) if str(p).startswith(str(out)) else real_usage(p))
    root = preprocess(_cfg(slides, out, *EXTRA))
    manifest = pd.read_csv(root / "manifest.csv").set_index("slide_id")
    assert list(manifest["status"]) == ["failed"] * 3  # every slide recorded, the batch went on
    for sid in manifest.index:
        assert manifest.loc[sid, "error"].startswith(f"{root}/patches/{sid}_patches.h5: no space left on device")
    assert not [p for p in _files(root) if p.suffix in (".h5", ".tmp")]

    @contextlib.contextmanager
    def write_fails(path):  # ENOSPC at the final flush, after the writer has written
        with atomic_path(path) as tmp:
            yield tmp
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("milkit.preprocess.manifest.atomic_path", write_fails)
    code, line = _exit_line(_cfg(slides, tmp_path / "out2", *EXTRA), capsys)
    manifest = tmp_path / "out2" / TAG / "manifest.csv"
    assert code == 2 and line == (f"milkit: error: {manifest}: no space left on device; stopped after 0 of 3 slides "
                                  "(rerun to go on)")
    assert not manifest.exists() and not list(manifest.parent.glob(".manifest.csv.*"))


def test_a_really_full_tmpfs_does_not_crash(slides, tmp_path) -> None:
    with small_tmpfs(tmp_path / "small_disk", "100k") as disk:
        args = [f"input={slides}", f"output={disk / 'out'}", *OVERRIDES, *EXTRA]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), *args], env=env,
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]  # libhdf5 used to segfault here (exit 139)
        manifest = pd.read_csv(disk / "out" / TAG / "manifest.csv")
        assert len(manifest) == 3 and (manifest["status"] == "failed").any()
        assert manifest.loc[manifest["status"] == "failed", "error"].str.contains("no space left on device").all()
        assert not [p for p in _files(disk) if p.suffix == ".tmp"]


def test_output_under_a_regular_file(slides, tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, line = _exit_line(_cfg(slides, blocker / "out", *EXTRA), capsys)
    assert code == 2 and line == (f"milkit: error: output {blocker}/out/{TAG}: cannot create a folder there "
                                  f"({blocker} is a file, not a folder)")
    # the CLI: Hydra's run folder (<output>/.hydra/...) is checked before Hydra writes it
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), f"input={slides}",
                          f"output={blocker}/out", *OVERRIDES], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    (line,) = res.stderr.strip().splitlines()
    assert res.returncode == 2 and line.startswith(f"milkit: error: run folder (hydra.run.dir) {blocker}/out/.hydra/")
    assert line.endswith(f"({blocker} is a file, not a folder)") and blocker.read_text() == ""


@pytest.mark.parametrize("content, reason", [("", "is empty (no columns)"), ("path,mpp\n", "has a header but no rows")])
def test_empty_slide_csv(tmp_path, capsys, content: str, reason: str) -> None:
    csv = tmp_path / "slides.csv"
    csv.write_text(content)
    code, line = _exit_line(_cfg(csv, tmp_path / "out"), capsys)
    assert code == 2 and line == f"milkit: error: {csv}: slide CSV {reason}"


def test_ctrl_c_is_one_line_and_exit_130(slides, tmp_path) -> None:
    args = [f"input={slides}", f"output={tmp_path / 'run'}", *OVERRIDES, *EXTRA, "batch_size=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "preprocess.py"), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if ignored here
    feats = tmp_path / "run" / TAG / "features_tiny"
    deadline = time.monotonic() + 120
    while not (feats.is_dir() and list(feats.glob(".s*.h5.*.tmp"))):  # mid-slide: features half written
        assert proc.poll() is None and time.monotonic() < deadline, "preprocess ended before it could be stopped"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    (line,) = err.strip().splitlines()
    assert line.startswith("milkit: interrupted: preprocessing stopped at slide s") and "a rerun redoes" in line
    assert not list(feats.glob("*.tmp"))  # the half-written features file is removed


def test_a_swallowed_ctrl_c_still_stops_after_the_slide(slides, tmp_path, monkeypatch, capsys) -> None:
    from milkit.preprocess import runner

    swallowed: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))
    real = runner.process_slide

    def slide_then_lost_ctrl_c(*args, **kwargs):
        row = real(*args, **kwargs)
        RaisesSignalWhenDeleted()
        return row

    monkeypatch.setattr(runner, "process_slide", slide_then_lost_ctrl_c)
    with ctrl_c_acts():
        code, line = _exit_line(_cfg(slides, tmp_path / "run", *EXTRA), capsys)
    manifest = tmp_path / "run" / TAG / "manifest.csv"
    assert swallowed == [KeyboardInterrupt]  # the exception itself was lost ...
    assert code == 130 and line == (f"milkit: interrupted: preprocessing stopped after slide s0 (1 of 3 done, listed "
                                    f"in {manifest}; a rerun redoes only what is missing)")  # ... the flag was not
    assert pd.read_csv(manifest)["slide_id"].tolist() == ["s0"]
