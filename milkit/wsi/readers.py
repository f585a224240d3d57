"""Slide readers behind one registry: OpenSlide for every format it knows, a plain-image fallback.

Every reader returns RGB ``uint8`` arrays ``(h, w, 3)``; areas without image data (transparent in OpenSlide,
outside the image bounds) are white, so they never look like tissue. ``open_slide`` picks the reader
(``reader="auto"``: OpenSlide when it recognises the file, else the image reader for plain image suffixes)
and resolves the MPP chain (``milkit.wsi.mpp``). A reader is cheap to open; DataLoader workers each open
their own.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from milkit.errors import DataError
from milkit.registry import Registry
from milkit.wsi.jpegtiff import downscaled_level
from milkit.wsi.mpp import MppResult, objective_power, require_mpp, resolve_mpp
from milkit.wsi.tiff_check import tiff_truncation

__all__ = ["READERS", "SlideReader", "OpenSlideReader", "ImageReader", "open_slide", "IMAGE_SUFFIXES"]

READERS: Registry["SlideReader"] = Registry("reader")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_IMAGE_PIXELS = 1 << 31  # 6 GiB of RGB: beyond that a plain image must be converted to a pyramid
FAST_THUMB_PIXELS = 1 << 22  # levels at least this large use the DCT-downscaled JPEG path for thumbnails
_CHUNK = 4096  # level pixels per side read at once when building thumbnails (bounded memory)


class SlideReader(ABC):
    """Common interface. Coordinates are level-0 ``(x, y)``; sizes are ``(w, h)`` at the given level."""

    name = "base"

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, force_mpp: bool = False) -> None:
        self.path = Path(path)
        _check_file(self.path)
        self._mpp_override, self._force_mpp = mpp, force_mpp
        self._mpp_result: MppResult | None = None

    # -- geometry -------------------------------------------------------------------------------------------
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: Mapping[str, str]

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (level 0 when upsampling)."""
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-3)]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    # -- resolution -----------------------------------------------------------------------------------------
    def _tiff_resolution(self) -> tuple[object, object] | None:
        return None

    @property
    def mpp_result(self) -> MppResult:
        if self._mpp_result is None:
            self._mpp_result = resolve_mpp(self.properties, self._tiff_resolution(), self._mpp_override,
                                           self._force_mpp)
        return self._mpp_result

    @property
    def mpp(self) -> float:
        """µm per level-0 pixel; raises ``DataError`` when no source gives one."""
        return require_mpp(self.mpp_result, self.path)

    @property
    def objective_power(self) -> float | None:
        return objective_power(self.properties)

    # -- pixels ---------------------------------------------------------------------------------------------
    @abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of ``size`` at ``level`` whose top-left is ``location`` in level-0 pixels."""

    def thumbnail_size(self, mpp: float) -> tuple[int, int]:
        """``(w, h)`` of the whole slide at ``mpp`` µm/px (never finer than level 0)."""
        ds = max(mpp / self.mpp, 1.0)
        return max(1, round(self.dimensions[0] / ds)), max(1, round(self.dimensions[1] / ds))

    def thumbnail(self, mpp: float) -> tuple[np.ndarray, tuple[float, float]]:
        """Whole slide at about ``mpp`` µm/px, read chunk-wise from the best level and area-resampled.

        Returns the image and its exact scale ``(sx, sy)`` in level-0 pixels per thumbnail pixel.
        """
        w0, h0 = self.dimensions
        tw, th = self.thumbnail_size(mpp)
        sx, sy = w0 / tw, h0 / th
        level = self.best_level(max(mpp / self.mpp, 1.0))
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        fx, fy = sx / lds, sy / lds  # level pixels per thumbnail pixel
        out = np.empty((th, tw, 3), np.uint8)
        step_x, step_y = max(1, int(_CHUNK // fx)), max(1, int(_CHUNK // fy))
        for oy in range(0, th, step_y):
            oy1 = min(th, oy + step_y)
            ly0, ly1 = int(math.floor(oy * fy)), min(lh, int(math.ceil(oy1 * fy)))
            for ox in range(0, tw, step_x):
                ox1 = min(tw, ox + step_x)
                lx0, lx1 = int(math.floor(ox * fx)), min(lw, int(math.ceil(ox1 * fx)))
                region = self.read_region((round(lx0 * lds), round(ly0 * lds)), level,
                                          (max(1, lx1 - lx0), max(1, ly1 - ly0)))
                out[oy:oy1, ox:ox1] = cv2.resize(region, (ox1 - ox, oy1 - oy), interpolation=cv2.INTER_AREA)
        return out, (sx, sy)

    def close(self) -> None:
        """Release the file handle."""

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Facts recorded in outputs and error messages."""
        return {"reader": self.name, "path": str(self.path), "level_dimensions": self.level_dimensions,
                "level_downsamples": self.level_downsamples, "mpp": self.mpp_result.mpp,
                "mpp_source": self.mpp_result.source, "objective_power": self.objective_power}


def _rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (un-premultiplied) RGBA over white; OpenSlide marks missing data as alpha 0."""
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


@READERS.register("openslide")
class OpenSlideReader(SlideReader):
    """Any format OpenSlide (``openslide-bin``) reads: Aperio, Hamamatsu, Leica, MIRAX, Philips, generic TIFF…"""

    name = "openslide"

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, force_mpp: bool = False) -> None:
        super().__init__(path, mpp, force_mpp)
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise DataError(f"{self.path}: OpenSlide cannot open it ({_first_line(exc)})") from None
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = dict(self._slide.properties)

    def thumbnail(self, mpp: float) -> tuple[np.ndarray, tuple[float, float]]:
        """Fast path for JPEG-tiled TIFF pyramids (DCT-domain downscaled decode), else the generic read."""
        level = self.best_level(max(mpp / self.mpp, 1.0))
        lw, lh = self.level_dimensions[level]
        if self.properties.get("openslide.vendor") in ("generic-tiff", "aperio") and lw * lh >= FAST_THUMB_PIXELS:
            tw, th = self.thumbnail_size(mpp)
            try:
                img = downscaled_level(self.path, self.level_dimensions, level, (tw, th))
            except Exception:  # noqa: BLE001 - any decoder surprise: fall back to OpenSlide, which reports it
                img = None
            if img is not None:
                return img, (self.dimensions[0] / tw, self.dimensions[1] / th)
        return super().thumbnail(mpp)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        import openslide

        try:
            img = self._slide.read_region((int(location[0]), int(location[1])), int(level),
                                          (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as exc:
            raise DataError(f"{self.path}: cannot read region {tuple(location)} level {level} "
                            f"({_first_line(exc)})") from None
        return _rgba_to_rgb_on_white(np.asarray(img))

    def close(self) -> None:
        self._slide.close()


@READERS.register("image")
class ImageReader(SlideReader):
    """Plain single-level images (PNG, JPEG, BMP, non-pyramidal TIFF), loaded into memory on first read."""

    name = "image"

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, force_mpp: bool = False) -> None:
        super().__init__(path, mpp, force_mpp)
        self._array: np.ndarray | None = None
        self._resolution: tuple[object, object] | None = None
        self.properties = {}
        try:
            w, h = self._probe()
        except Exception as exc:  # noqa: BLE001 - any decoder error means an unreadable file
            raise DataError(f"{self.path}: cannot open as an image ({_first_line(exc)})") from None
        if w * h > MAX_IMAGE_PIXELS:
            raise DataError(f"{self.path}: {w}x{h} is too large for the in-memory plain-image reader "
                            "(and not a pyramid OpenSlide reads)")
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def _probe(self) -> tuple[int, int]:
        if self.path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                page = tif.pages[0]
                tags = page.tags
                if "XResolution" in tags and "ResolutionUnit" in tags:
                    res = tags["XResolution"].value
                    unit = tags["ResolutionUnit"].value
                    self._resolution = (res[0] / res[1], getattr(unit, "name", unit))
                return int(page.imagewidth), int(page.imagelength)
        with _pil_open(self.path) as img:
            dpi = img.info.get("dpi")
            if dpi and img.info.get("jfif_unit", 1) != 0:
                self._resolution = (float(dpi[0]), "inch")
            return img.size

    def _tiff_resolution(self) -> tuple[object, object] | None:
        return self._resolution

    def _load(self) -> np.ndarray:
        if self._array is None:
            try:
                if self.path.suffix.lower() in (".tif", ".tiff"):
                    import tifffile

                    arr = tifffile.imread(self.path, key=0)
                else:
                    with _pil_open(self.path) as img:
                        arr = np.asarray(img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB"))
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{self.path}: cannot decode image ({_first_line(exc)}); truncated or corrupt?") \
                    from None
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            if arr.dtype != np.uint8:
                raise DataError(f"{self.path}: unsupported pixel type {arr.dtype} (need 8-bit RGB)")
            self._array = _rgba_to_rgb_on_white(arr) if arr.shape[2] == 4 else np.ascontiguousarray(arr[..., :3])
        return self._array

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise DataError(f"{self.path}: plain images have one level, asked for level {level}")
        arr = self._load()
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, arr.shape[1]), min(y + h, arr.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = arr[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self._array = None


def _pil_open(path: Path) -> Any:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # whole-slide-sized plain images exceed PIL's decompression-bomb guard
    return Image.open(path)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def open_slide(path: str | os.PathLike, reader: str = "auto", mpp: float | None = None,
               force_mpp: bool = False) -> SlideReader:
    """Open ``path`` with the named reader; ``"auto"`` asks OpenSlide first, then plain-image suffixes. A TIFF
    cut short (IFDs or image data past the end of the file) is a ``DataError`` saying so, whichever reader."""
    path = Path(path)
    _check_file(path)
    import openslide

    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        fmt = None
    # NDPI files over 4 GiB keep 32-bit offsets that wrap around, so their offsets cannot be checked
    truncated = None if fmt == "hamamatsu-ndpi" and path.stat().st_size >= 1 << 32 else tiff_truncation(path)
    if truncated:
        raise DataError(f"{path}: {truncated}")
    if reader != "auto":
        return READERS.create(reader, path=path, mpp=mpp, force_mpp=force_mpp)
    if fmt is not None:
        return OpenSlideReader(path, mpp, force_mpp)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageReader(path, mpp, force_mpp)
    raise DataError(f"{path}: not a slide format OpenSlide recognises, nor a plain image ({', '.join(IMAGE_SUFFIXES)})")
