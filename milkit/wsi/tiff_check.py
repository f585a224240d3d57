"""Truncated TIFF detection: a header that parses but IFDs or tile data past the end of the file.

A slide copied or downloaded in part keeps its TIFF header, so OpenSlide either does not recognise it (the IFD
chain breaks off: "not a slide format"), fails on a short read, or opens it and fails on the first missing
tile. :func:`tiff_truncation` walks the IFD chain (classic TIFF and BigTIFF, either byte order) and the
tile/strip offset and byte-count arrays, reading only those, and names the first offset past the end.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["tiff_truncation"]

_ARRAY_TYPES = {3: "u2", 4: "u4", 16: "u8", 18: "u8"}  # SHORT, LONG, LONG8, IFD8
_DATA_TAGS = ((324, 325), (273, 279))  # (TileOffsets, TileByteCounts), (StripOffsets, StripByteCounts)
_MAX_IFDS = 100_000


class _Truncated(Exception):
    pass


def _past_end(what: str, offset: int, size: int) -> _Truncated:
    return _Truncated(f"truncated: {what} offset {offset} past end of file (size {size})")


def _read(f, offset: int, n: int, size: int, what: str) -> bytes:
    if offset + n > size:
        raise _past_end(f"{what} at", offset, size)
    f.seek(offset)
    return f.read(n)


def tiff_truncation(path: str | os.PathLike) -> str | None:
    """``"truncated: ... offset X past end of file (size Y)"`` for a TIFF whose IFDs, offset arrays or tile data
    lie past its end; None for a complete TIFF or a file that is not a TIFF."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return None
        e = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(e + "H", head[2:4])[0]
        if version == 42:  # classic: 2-byte entry count, 12-byte entries (tag, type, 4-byte count, 4-byte value)
            ptr, count, offset = "I", "H", struct.unpack(e + "I", head[4:8])[0]
        elif version == 43 and len(head) >= 16:  # BigTIFF: 8-byte counts, offsets and values
            ptr, count, offset = "Q", "Q", struct.unpack(e + "Q", head[8:16])[0]
        else:
            return None
        try:
            _walk(f, e, ptr, count, offset, size)
        except _Truncated as t:
            return str(t)
    return None


def _walk(f, e: str, ptr: str, count: str, offset: int, size: int) -> None:
    psize, csize = struct.calcsize(ptr), struct.calcsize(count)
    entry = 4 + 2 * psize  # tag, type, count, value (the count as wide as a pointer)
    seen: set[int] = set()
    for n in range(_MAX_IFDS):
        if offset == 0 or offset in seen:
            return
        seen.add(offset)
        what = f"IFD {n}"
        k = struct.unpack(e + count, _read(f, offset, csize, size, what))[0]
        raw = _read(f, offset + csize, k * entry + psize, size, what)
        tags = {}
        for i in range(k):
            tag, typ, cnt = struct.unpack(e + "HH" + ptr, raw[i * entry: i * entry + 4 + psize])
            tags[tag] = (typ, cnt, raw[i * entry + 4 + psize: (i + 1) * entry])
        for off_tag, cnt_tag in _DATA_TAGS:
            if off_tag in tags and cnt_tag in tags:
                offsets = _array(f, e, ptr, tags[off_tag], size, f"{what}'s data offsets")
                counts = _array(f, e, ptr, tags[cnt_tag], size, f"{what}'s data byte counts")
                if len(offsets) and len(offsets) == len(counts):
                    last = int((offsets + counts).max())
                    if last > size:
                        raise _past_end(f"{what}'s image data ends at", last, size)
        offset = struct.unpack(e + ptr, raw[k * entry: k * entry + psize])[0]


def _array(f, e: str, ptr: str, field: tuple[int, int, bytes], size: int, what: str) -> np.ndarray:
    """A SHORT/LONG/LONG8 array stored in the entry (if it fits) or at the offset the entry holds."""
    typ, cnt, value = field
    if typ not in _ARRAY_TYPES:
        return np.zeros(0, np.uint64)
    dtype = np.dtype(_ARRAY_TYPES[typ]).newbyteorder(e)
    nbytes = cnt * dtype.itemsize
    if nbytes <= len(value):
        data = value[:nbytes]
    else:
        data = _read(f, struct.unpack(e + ptr, value)[0], nbytes, size, what)
    return np.frombuffer(data, dtype).astype(np.uint64)
