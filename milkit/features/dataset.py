"""Tiles of one slide as a map-style dataset whose items are whole batches of uint8 tiles.

Each DataLoader worker opens the slide once (lazily, in its own process; a handle is never shared across a
fork) and reads its batches sequentially. Items are ``(B, read_size, read_size, 3)`` uint8 tensors, so one
inter-process message carries a batch and tiles cross to the device as bytes (resizing happens there).
The worker path uses no OpenCV: in a forked child, OpenCV's thread pool inherited from a parent that already
used it can deadlock (seen with ``cv2.setNumThreads``). PyTorch already gives each worker one thread.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from milkit.utils.workers import worker_init
from milkit.wsi.readers import SlideReader, open_slide

__all__ = ["TileBatches", "tile_loader", "default_num_workers"]


class TileBatches(Dataset):
    """Batch ``i`` holds tiles ``coords[i*B:(i+1)*B]`` read at ``level`` with side ``size``."""

    def __init__(self, path: str | os.PathLike, coords: np.ndarray, level: int, size: int, batch_size: int,
                 reader: str = "auto") -> None:
        self.path, self.coords, self.level, self.size = str(path), np.asarray(coords), int(level), int(size)
        self.batch_size, self.reader_name = int(batch_size), reader
        self._reader: SlideReader | None = None
        self._pid = -1

    def __len__(self) -> int:
        return math.ceil(len(self.coords) / self.batch_size)

    def reader(self) -> SlideReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = open_slide(self.path, self.reader_name), os.getpid()
        return self._reader

    def __getitem__(self, i: int) -> torch.Tensor:
        rows = self.coords[i * self.batch_size:(i + 1) * self.batch_size]
        batch = torch.empty((len(rows), self.size, self.size, 3), dtype=torch.uint8)
        if get_worker_info() is not None:
            batch.share_memory_()  # filled in place: sending it to the main process then copies nothing
        out = batch.numpy()
        reader, wh = self.reader(), (self.size, self.size)
        for j, (x, y) in enumerate(rows):
            out[j] = reader.read_region((int(x), int(y)), self.level, wh)
        return batch

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None, "_pid": -1}


def default_num_workers(device_type: str = "cuda") -> int:
    """GPU: one reader per spare core (at most 16). CPU: a quarter of the cores (at least 1), because the
    encoder needs the rest there (reading a tile costs far less than encoding it)."""
    cores = os.cpu_count() or 2
    return max(1, min(16, cores - 1)) if device_type != "cpu" else max(1, cores // 4)


def tile_loader(dataset: TileBatches, num_workers: int | None = None, pin_memory: bool = False) -> DataLoader:
    nw = default_num_workers("cuda" if pin_memory else "cpu") if num_workers is None else int(num_workers)
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=nw, pin_memory=pin_memory,
                      prefetch_factor=4 if nw else None, persistent_workers=False, worker_init_fn=worker_init())
