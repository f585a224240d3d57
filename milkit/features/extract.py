"""Batched patch-feature extraction of one slide into a features HDF5 file.

Workers read uint8 tiles; the main process moves each batch to the device (pinned, non-blocking on CUDA),
resizes and normalises it there, runs the encoder under ``torch.inference_mode`` and autocast (the
encoder's declared precision on GPU, fp32 on CPU unless overridden), and writes rows in coordinate order.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, ContextManager, Iterator, Mapping

import numpy as np
import torch

from milkit.errors import ConfigError
from milkit.features.dataset import TileBatches, default_num_workers, tile_loader
from milkit.features.encoders import PatchEncoder
from milkit.wsi.h5 import feature_writer

__all__ = ["extract_features", "resolve_device", "resolve_precision", "autocast", "cpu_threads"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str = "auto", shard: int = 0) -> torch.device:
    """``auto``: GPU ``shard % device_count`` when CUDA is available (one shard per GPU), else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", shard % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device}: CUDA is not available on this machine")
    return dev


def resolve_precision(encoder: PatchEncoder, device: torch.device, precision: str | None = None) -> str:
    """An explicit ``precision`` wins; otherwise the encoder's preferred one on GPU and fp32 on CPU."""
    if precision is not None:
        if precision not in _DTYPES:
            raise ConfigError(f"precision={precision!r}: use one of {', '.join(_DTYPES)}")
        return precision
    return encoder.spec.precision if device.type == "cuda" else "fp32"


@contextlib.contextmanager
def cpu_threads(device: torch.device, num_workers: int, threads: int | str | None = "auto") -> Iterator[None]:
    """On the CPU, run the encoder with ``threads`` intra-op threads (``"auto"``: the cores the readers leave
    free, never more than the current setting), restoring the previous setting after. More threads than free
    cores make OpenMP spin against the reader processes: on a loaded 2-core machine a 2-thread tiny encoder
    burnt 20× the CPU time of a 1-thread one."""
    if device.type != "cpu" or threads is None:
        yield
        return
    before = torch.get_num_threads()
    n = min(before, max(1, (os.cpu_count() or 1) - num_workers)) if threads == "auto" else int(threads)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, precision: str) -> ContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def extract_features(slide: str | os.PathLike, coords: np.ndarray, coord_attrs: Mapping[str, Any],
                     encoder: PatchEncoder, out_path: str | os.PathLike, *, reader: str = "auto",
                     batch_size: int = 64, num_workers: int | None = None, device: torch.device | None = None,
                     precision: str | None = None, feature_dtype: str = "float32",
                     instance_labels: np.ndarray | None = None, label_attrs: Mapping[str, Any] | None = None,
                     progress: Any = None, threads: int | str | None = "auto") -> int:
    """Encode every tile of ``coords`` (level-0 top-lefts; read level and size from ``coord_attrs``) and
    write ``out_path`` atomically. ``progress`` is an optional tqdm-like bar advanced per tile; ``threads``
    sets the encoder's CPU threads (see ``cpu_threads``)."""
    device = device or torch.device("cpu")
    precision = resolve_precision(encoder, device, precision)
    if feature_dtype not in ("float32", "float16"):
        raise ConfigError(f"feature_dtype={feature_dtype!r}: use float32 or float16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    encoder = encoder.to(device).eval()
    data = TileBatches(slide, coords, int(coord_attrs["read_level"]), int(coord_attrs["read_size"]), batch_size,
                       reader)
    nw = default_num_workers(device.type) if num_workers is None else int(num_workers)
    loader = tile_loader(data, nw, pin_memory=device.type == "cuda")
    writing = feature_writer(out_path, coords, coord_attrs, encoder.dim, encoder.attrs(precision), feature_dtype,
                             instance_labels, label_attrs)
    with writing as writer, torch.inference_mode(), cpu_threads(device, nw, threads):
        for tiles in loader:
            with autocast(device, precision):
                feats = encoder.encode(tiles.to(device, non_blocking=True))
            writer.write(feats.float().cpu().numpy().astype(feature_dtype, copy=False))
            if progress is not None:
                progress.update(len(tiles))
    return len(coords)
