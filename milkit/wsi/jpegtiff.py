"""Fast downscaled reads of JPEG-tiled TIFF levels (generic TIFF, Aperio SVS) for thumbnails.

Each tile is decoded by libjpeg at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``draft``), which costs a
fraction of a full decode, on a thread pool (decoding releases the GIL), then area-resampled. This is what
makes segmenting a 40× slide whose nearest level is 16× downsampled cheap; the result matches OpenSlide's
pixels up to JPEG rounding. Anything unusual (other compressions, RGB-photometric JPEG, planar data, level
sizes that do not match OpenSlide's) returns None and the caller reads through OpenSlide.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

__all__ = ["downscaled_level"]

_MAX_CANVAS = 1 << 30  # bytes of the intermediate image before giving up on the fast path


def _tiled_pages(tif: "object", dims: tuple[tuple[int, int], ...]) -> list | None:
    pages = [p for p in tif.pages if p.is_tiled]
    if [(p.imagewidth, p.imagelength) for p in pages[:len(dims)]] != [tuple(d) for d in dims]:
        return None
    return pages


def _decode(stream: bytes, size: tuple[int, int], k: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(stream)) as im:
        if im.format != "JPEG" or im.size != size:
            raise ValueError("unexpected tile")
        im.draft("RGB", (size[0] // k, size[1] // k))
        return np.asarray(im.convert("RGB"))


def downscaled_level(path: str | os.PathLike, dims: tuple[tuple[int, int], ...], level: int,
                     out_size: tuple[int, int], threads: int | None = None) -> np.ndarray | None:
    """Level ``level`` of a JPEG-tiled pyramid resampled to ``out_size = (w, h)``, or None if unsupported."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = _tiled_pages(tif, dims)
        if pages is None:
            return None
        page = pages[level]
        if (page.compression != 7 or page.photometric != 6 or page.planarconfig != 1 or page.samplesperpixel != 3
                or page.bitspersample != 8):
            return None  # only YCbCr JPEG, the common scanner encoding
        tables = page.jpegtables
        tw, th = page.tilewidth, page.tilelength
        lw, lh = page.imagewidth, page.imagelength
        offsets, counts = page.dataoffsets, page.databytecounts
    f = min(lw / out_size[0], lh / out_size[1])
    k = next(s for s in (8, 4, 2, 1) if s <= max(f, 1))
    cw, ch = -(-lw // k), -(-lh // k)
    if cw * ch * 3 > _MAX_CANVAS or tw % k or th % k:
        return None
    canvas = np.full((ch, cw, 3), 255, np.uint8)
    ntx = -(-lw // tw)
    head = tables[:-2] if tables else b""
    fd = os.open(Path(path), os.O_RDONLY)

    def one(i: int) -> None:
        if counts[i] == 0:
            return  # sparse tile: no data, shown white like OpenSlide's transparent + our compositing
        data = os.pread(fd, counts[i], offsets[i])
        tile = _decode(head + data[2:] if head else data, (tw, th), k)
        y, x = (i // ntx) * th // k, (i % ntx) * tw // k
        hh, ww = min(th // k, ch - y), min(tw // k, cw - x)
        canvas[y:y + hh, x:x + ww] = tile[:hh, :ww]

    try:
        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(one, range(len(offsets))))
    finally:
        os.close(fd)
    # crop to the exact level extent at scale 1/k, then area-resample to the requested size
    canvas = canvas[:max(1, round(lh / k)), :max(1, round(lw / k))]
    return cv2.resize(canvas, out_size, interpolation=cv2.INTER_AREA)
