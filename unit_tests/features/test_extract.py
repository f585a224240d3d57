from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from milkit.errors import ConfigError
from milkit.features.dataset import TileBatches
from milkit.features.encoders import create_encoder
from milkit.features.extract import extract_features, resolve_device, resolve_precision
from milkit.wsi.readers import open_slide
from milkit.wsi.tiling import grid_coords, plan_geometry

pytestmark = pytest.mark.wsi  # needs OpenSlide and generated slides


@pytest.fixture(scope="module")
def setup(slide):
    with open_slide(slide) as r:
        geom = plan_geometry(r, 1.0, 64, 0)  # 2x: read 128 px at level 0, encoder resizes to 64
        coords = grid_coords(geom)[::3]
        direct = np.stack([r.read_region(tuple(c), 0, (128, 128)) for c in coords])
    attrs = {**geom.attrs(), "name": "s", "segmenter": "{}"}
    return coords, attrs, direct


def test_round_trip_matches_direct_encoding(slide, setup, tmp_path):
    coords, attrs, direct = setup
    enc = create_encoder("tiny")
    labels = np.arange(len(coords)) % 2
    outs = []
    for workers in (0, 1):
        out = tmp_path / f"w{workers}.h5"
        n = extract_features(slide, coords, attrs, enc, out, batch_size=7, num_workers=workers,
                             instance_labels=labels, label_attrs={"source": "test"})
        assert n == len(coords)
        with h5py.File(out) as f:
            outs.append(f["features"][()])
            np.testing.assert_array_equal(f["coords"][()], coords)
            np.testing.assert_array_equal(f["instance_labels"][()], labels)
            fa, ca = dict(f["features"].attrs), dict(f["coords"].attrs)
    with torch.inference_mode():
        want = enc.encode(torch.from_numpy(direct)).numpy()
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs[0], outs[1])  # worker processes change nothing
    assert fa["encoder"] == "tiny" and fa["precision"] == "fp32" and fa["input_size"] == 64
    assert ca["read_size"] == 128 and ca["patch_size_level0"] == 128 and ca["name"] == "s"


def test_batches_open_the_slide_once_per_process(slide, setup):
    coords, _, direct = setup
    ds = TileBatches(slide, coords, 0, 128, batch_size=4)
    assert len(ds) == -(-len(coords) // 4)
    first = ds[0]
    reader = ds._reader
    assert first.dtype == torch.uint8 and first.shape == (4, 128, 128, 3)
    np.testing.assert_array_equal(ds[len(ds) - 1].numpy(), direct[(len(ds) - 1) * 4:])
    assert ds._reader is reader  # reused, not reopened
    assert ds.__getstate__()["_reader"] is None  # never pickled into a worker


def test_precision_and_device_rules(slide, setup, tmp_path):
    enc = create_encoder("tiny")
    cpu = torch.device("cpu")
    assert resolve_precision(enc, cpu) == "fp32"
    assert resolve_precision(create_encoder("tiny"), torch.device("cuda", 0)) == "fp32"
    assert resolve_precision(enc, cpu, "bf16") == "bf16"
    with pytest.raises(ConfigError, match="precision='fp8'"):
        resolve_precision(enc, cpu, "fp8")
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto", shard=3) == cpu
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")
    coords, attrs, _ = setup
    extract_features(slide, coords, attrs, enc, tmp_path / "a.h5", num_workers=0)
    extract_features(slide, coords, attrs, enc, tmp_path / "b.h5", num_workers=0, precision="bf16",
                     feature_dtype="float16")
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        a, b = fa["features"][()], fb["features"][()]
        assert fb["features"].dtype == np.float16 and fb["features"].attrs["precision"] == "bf16"
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b.astype(np.float32), axis=1)
    assert cos.min() > 0.99


def test_cpu_threads_leave_cores_to_readers(monkeypatch):
    from milkit.features.extract import cpu_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    cpu = torch.device("cpu")
    torch.set_num_threads(6)
    try:
        for workers, threads, inside in [(2, "auto", 6), (4, "auto", 4), (8, "auto", 1), (2, 3, 3), (2, None, 6)]:
            with cpu_threads(cpu, workers, threads):
                assert torch.get_num_threads() == inside
            assert torch.get_num_threads() == 6
        with cpu_threads(torch.device("meta"), 8):
            assert torch.get_num_threads() == 6  # only the CPU is affected
    finally:
        torch.set_num_threads(1)
