"""Synthetic whole-slide images with known tissue and planted "tumour" regions, for tests and demos.

A ``SyntheticScene`` is a set of tissue polygons (blobby ellipses, some with a lumen-like hole) and tumour
polygons inside tissue, in level-0 pixels. ``write_synthetic_slide`` renders it tile by tile into a
pyramidal JPEG TIFF (4× steps) that OpenSlide reads as ``generic-tiff`` or ``aperio``; nothing larger than a
tile is held in memory, so a 100k × 80k slide needs only megabytes. Identical tiles (background, tissue
interiors) are JPEG-encoded once and reused; with ``sparse_background`` the level-0 background tiles are
left empty (OpenSlide renders them transparent, the readers turn that into white), keeping such files small.
The ground truth (``scene.mask``, the tumour GeoJSON) comes from the same polygons that were drawn.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from milkit.wsi.geojson import Polygon, rasterize, write_geojson
from milkit.wsi.tiling import summed_area_table

__all__ = ["SyntheticScene", "make_scene", "write_synthetic_slide", "write_synthetic_image",
           "write_synthetic_cohort"]

_WHITE = 255
_TEX_SIZE = 256
_BANK = 4
_COLORS = {  # (base RGB, nucleus RGB, nuclei per 10k px², nucleus radius range)
    "tissue": ((232, 166, 204), (96, 52, 142), 3.0, (2, 4)),
    "tumour": ((186, 116, 196), (64, 30, 118), 22.0, (3, 6)),
}


def _blob(cx: float, cy: float, a: float, b: float, angle: float, rng: np.random.Generator,
          wobble: float = 0.15, n: int = 192) -> np.ndarray:
    """Closed outline ``(n, 2)`` of a rotated ellipse with a smooth random radial perturbation."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
    amps = rng.dirichlet(np.ones(4)) * wobble
    r = r * (1 + sum(amp * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k, amp in zip(range(2, 6), amps)))
    x, y = r * np.cos(t), r * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


@dataclass
class SyntheticScene:
    """Polygons in level-0 pixels of a ``width × height`` slide; tumour lies inside tissue."""

    width: int
    height: int
    tissue: list[Polygon] = field(default_factory=list)
    tumour: list[Polygon] = field(default_factory=list)
    seed: int = 0

    def mask(self, kind: str, shape: tuple[int, int]) -> np.ndarray:
        """Ground-truth boolean mask ``(h, w)`` covering the whole slide (``kind``: tissue | tumour)."""
        scale = (self.width / shape[1], self.height / shape[0])
        tissue = rasterize(self.tissue, shape, scale)
        return tissue if kind == "tissue" else tissue & rasterize(self.tumour, shape, scale)

    def _masks(self, x0: float, y0: float, w: int, h: int, scale: tuple[float, float]) -> tuple[np.ndarray, ...]:
        x1, y1 = x0 + w * scale[0], y0 + h * scale[1]
        shift = np.array([x0, y0])

        def local(polys: list[Polygon]) -> list[Polygon]:
            out = []
            for ext, holes in polys:
                lo, hi = ext.min(0), ext.max(0)
                if hi[0] >= x0 and lo[0] <= x1 and hi[1] >= y0 and lo[1] <= y1:
                    out.append((ext - shift, [r - shift for r in holes]))
            return out

        tis = local(self.tissue)
        if not tis:
            return np.zeros((h, w), bool), np.zeros((h, w), bool)
        tissue = rasterize(tis, (h, w), scale)
        tum = local(self.tumour)
        return tissue, (tissue & rasterize(tum, (h, w), scale)) if tum else np.zeros((h, w), bool)


def make_scene(width: int, height: int, n_tissue: int = 3, n_tumour: int = 1, hole: bool = True,
               seed: int = 0) -> SyntheticScene:
    """Tissue blobs in a row of cells (no overlap), ``n_tumour`` tumours in random blobs, one hole elsewhere."""
    rng = np.random.default_rng(seed)
    cols = int(np.ceil(np.sqrt(n_tissue * width / height)))
    rows = int(np.ceil(n_tissue / cols))
    cw, ch = width / cols, height / rows
    scene = SyntheticScene(width, height, seed=seed)
    axes = []
    for i in range(n_tissue):
        r, c = divmod(i, cols)
        a, b = sorted(rng.uniform(0.30, 0.40, 2) * min(cw, ch), reverse=True)
        cx, cy = (c + 0.5) * cw + rng.uniform(-0.05, 0.05) * cw, (r + 0.5) * ch + rng.uniform(-0.05, 0.05) * ch
        angle = rng.uniform(0, np.pi)
        scene.tissue.append((_blob(cx, cy, a, b, angle, rng), []))
        axes.append((cx, cy, b))
    hosts = rng.choice(n_tissue, size=min(n_tumour, n_tissue), replace=False) if n_tumour else []
    for i in hosts:
        cx, cy, b = axes[i]
        phi, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.25) * b
        rad = rng.uniform(0.3, 0.45) * b
        scene.tumour.append((_blob(cx + d * np.cos(phi), cy + d * np.sin(phi), rad, rad * rng.uniform(0.7, 1.0),
                                   rng.uniform(0, np.pi), rng, wobble=0.12), []))
    free = [i for i in range(n_tissue) if i not in set(int(h) for h in hosts)]
    if hole and free:
        cx, cy, b = axes[free[0]]
        phi = rng.uniform(0, 2 * np.pi)
        ring = _blob(cx + 0.4 * b * np.cos(phi), cy + 0.4 * b * np.sin(phi), 0.2 * b, 0.16 * b, phi, rng, 0.05)
        scene.tissue[free[0]] = (scene.tissue[free[0]][0], [ring])
    return scene


def _texture_bank(seed: int) -> dict[str, list[np.ndarray]]:
    """A few H&E-like textures per kind: noisy base colour with dark nuclei."""
    rng = np.random.default_rng(seed + 7919)
    bank: dict[str, list[np.ndarray]] = {}
    for kind, (base, nucleus, density, (r0, r1)) in _COLORS.items():
        bank[kind] = []
        for _ in range(_BANK):
            noise = cv2.GaussianBlur(rng.normal(0.0, 9.0, (_TEX_SIZE, _TEX_SIZE, 3)), (0, 0), 2.0)
            img = np.clip(np.asarray(base) + 2.5 * noise, 0, 255).astype(np.uint8)  # grainy, not white noise
            for _ in range(int(density * _TEX_SIZE * _TEX_SIZE / 1e4)):
                x, y = rng.integers(0, _TEX_SIZE, 2)
                shade = np.clip(np.asarray(nucleus) + rng.normal(0, 12, 3), 0, 255)
                cv2.circle(img, (int(x), int(y)), int(rng.integers(r0, r1 + 1)), shade.tolist(), -1, cv2.LINE_AA)
            bank[kind].append(img)
    return bank


def _pick(tx: int, ty: int, level: int) -> int:
    return (tx * 7919 + ty * 104729 + level * 31) % _BANK


class _TileRenderer:
    """Renders and JPEG-encodes the tiles of one pyramid level, reusing bytes of identical tiles."""

    def __init__(self, scene: SyntheticScene, bank: dict[str, list[np.ndarray]], quality: int) -> None:
        import imagecodecs

        self.scene, self.bank, self.quality, self._enc = scene, bank, quality, imagecodecs.jpeg8_encode
        self._cache: dict[tuple, bytes] = {}

    def encode(self, key: tuple, tile: np.ndarray) -> bytes:
        if key not in self._cache:
            self._cache[key] = self._enc(tile, level=self.quality)
        return self._cache[key]

    def tiles(self, level: int, size: tuple[int, int], scale: tuple[float, float], tile: int,
              sparse: bool) -> Iterator[bytes]:
        w, h = size
        white = np.full((tile, tile, 3), _WHITE, np.uint8)
        nx, ny = -(-w // tile), -(-h // tile)
        # classify tiles from a raster of 8 px per tile side; only mixed tiles are rasterised at full size
        r = 8
        rscale = (tile * scale[0] / r, tile * scale[1] / r)
        tissue_r = rasterize(self.scene.tissue, (ny * r, nx * r), rscale)
        empty, full = _tile_classes(tissue_r, r)
        no_tumour, all_tumour = _tile_classes(tissue_r & rasterize(self.scene.tumour, tissue_r.shape, rscale), r)
        for ty in range(ny):
            for tx in range(nx):
                k = _pick(tx, ty, level)
                if empty[ty, tx]:
                    yield b"" if sparse else self.encode(("white",), white)
                elif all_tumour[ty, tx]:
                    yield self.encode(("tumour", k), self.bank["tumour"][k])
                elif full[ty, tx] and no_tumour[ty, tx]:
                    yield self.encode(("tissue", k), self.bank["tissue"][k])
                else:
                    tissue, tumour = self.scene._masks(tx * tile * scale[0], ty * tile * scale[1], tile, tile, scale)
                    out = white.copy()
                    out[tissue] = self.bank["tissue"][k][tissue]
                    out[tumour] = self.bank["tumour"][k][tumour]
                    yield self._enc(out, level=self.quality)


def _tile_classes(mask: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ``r × r`` block: (no pixel set, all set) over the block grown by one pixel on every side, so an
    edge that only grazes a block still marks it as mixed."""
    sat = summed_area_table(mask)
    ny, nx = mask.shape[0] // r, mask.shape[1] // r
    y0, y1 = np.clip(np.arange(ny) * r - 1, 0, None), np.clip(np.arange(1, ny + 1) * r + 1, None, mask.shape[0])
    x0, x1 = np.clip(np.arange(nx) * r - 1, 0, None), np.clip(np.arange(1, nx + 1) * r + 1, None, mask.shape[1])
    s = sat[y1][:, x1] - sat[y0][:, x1] - sat[y1][:, x0] + sat[y0][:, x0]
    return s == 0, s == np.outer(y1 - y0, x1 - x0)


def _level_sizes(width: int, height: int, min_size: int) -> list[tuple[int, int]]:
    sizes = [(width, height)]
    while max(sizes[-1]) // 4 >= min_size:
        sizes.append((max(1, sizes[-1][0] // 4), max(1, sizes[-1][1] // 4)))
    return sizes


def _render_region(scene: SyntheticScene, bank: dict[str, list[np.ndarray]], size: tuple[int, int],
                   scale: tuple[float, float]) -> np.ndarray:
    """The whole slide rendered at ``size`` (small images only: thumbnails, plain-image files)."""
    w, h = size
    tissue, tumour = scene._masks(0, 0, w, h, scale)
    reps = (h // _TEX_SIZE + 1, w // _TEX_SIZE + 1, 1)
    out = np.full((h, w, 3), _WHITE, np.uint8)
    out[tissue] = np.tile(bank["tissue"][0], reps)[:h, :w][tissue]
    out[tumour] = np.tile(bank["tumour"][0], reps)[:h, :w][tumour]
    return out


def write_synthetic_slide(path: str | os.PathLike, scene: SyntheticScene, mpp: float = 0.25,
                          flavour: str = "generic", tile: int = 256, quality: int = 80,
                          sparse_background: bool = False, min_level_size: int = 128,
                          max_levels: int | None = None) -> Path:
    """Write ``scene`` as a pyramidal tiled JPEG TIFF.

    ``flavour``: ``generic`` (resolution tags → OpenSlide ``generic-tiff`` with mpp), ``aperio`` (Aperio
    ImageDescription with ``AppMag``/``MPP`` and a stripped thumbnail IFD → OpenSlide ``aperio``), or
    ``no_mpp`` (generic TIFF without resolution, for the missing-MPP path). Levels step by 4 down to
    ``min_level_size``; ``max_levels=3`` gives the 1/4/16 pyramid of most Aperio 40× scans.
    """
    import tifffile

    if flavour not in ("generic", "aperio", "no_mpp"):
        raise ValueError(f"unknown flavour {flavour!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bank = _texture_bank(scene.seed)
    renderer = _TileRenderer(scene, bank, quality)
    sizes = _level_sizes(scene.width, scene.height, min_level_size)[:max_levels]
    mag = 10.0 / mpp
    head = f"Aperio Image Library v12.0.15 \n{scene.width}x{scene.height} [0,0 {scene.width}x{scene.height}]"
    with tifffile.TiffWriter(path, bigtiff=scene.width * scene.height > 2**31) as tw:
        for level, (w, h) in enumerate(sizes):
            scale = (scene.width / w, scene.height / h)
            kw: dict = {}
            if flavour == "generic":
                kw = dict(resolution=(1e4 / (mpp * scale[0]), 1e4 / (mpp * scale[1])), resolutionunit="CENTIMETER")
            if flavour != "aperio" and level:
                kw["subfiletype"] = 1
            if flavour == "aperio":
                size_txt = "" if level == 0 else f" -> {w}x{h}"
                kw["description"] = (f"{head} ({tile}x{tile}){size_txt} JPEG/RGB Q={quality}|AppMag = {mag:g}"
                                     f"|MPP = {mpp:g}|Filename = {path.stem}")
            tw.write(renderer.tiles(level, (w, h), scale, tile, sparse_background and level == 0),
                     shape=(h, w, 3), dtype=np.uint8, photometric="ycbcr", subsampling=(2, 2),
                     compression="jpeg", tile=(tile, tile), metadata=None, **kw)
            if flavour == "aperio" and level == 0:
                tsize = next(s for s in _level_sizes(scene.width, scene.height, 1) if max(s) <= 1024)
                thumb = _render_region(scene, bank, tsize, (scene.width / tsize[0], scene.height / tsize[1]))
                tw.write(thumb, photometric="rgb", compression="jpeg", metadata=None,
                         description=f"{head} -> {tsize[0]}x{tsize[1]} - |AppMag = {mag:g}|MPP = {mpp:g}")
    return path


def write_synthetic_image(path: str | os.PathLike, scene: SyntheticScene, mpp: float | None = 0.5) -> Path:
    """Single-level plain image (PNG/JPEG via Pillow with dpi, ``.tif`` stripped via tifffile)."""
    path = Path(path)
    img = _render_region(scene, _texture_bank(scene.seed), (scene.width, scene.height), (1.0, 1.0))
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        kw = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if mpp else {}
        tifffile.imwrite(path, img, photometric="rgb", metadata=None, **kw)
    else:
        from PIL import Image

        Image.fromarray(img).save(path, **({"dpi": (25400 / mpp, 25400 / mpp)} if mpp else {}))
    return path


def write_synthetic_cohort(root: str | os.PathLike, n_slides: int = 8, width: int = 4096, height: int = 3072,
                           mpp: float = 0.5, positive_fraction: float = 0.5, seed: int = 0,
                           flavour: str = "generic") -> Path:
    """A small cohort: ``slides/<id>.tiff``, ``annotations/<id>.geojson`` (tumour polygons; an empty
    collection for negative slides, so every instance label is known) and ``cohort.csv``
    (``slide_id, case_id, label`` with label 1 = tumour present). Returns the CSV path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_pos = int(round(n_slides * positive_fraction))
    labels = rng.permutation([1] * n_pos + [0] * (n_slides - n_pos))
    rows = []
    for i, label in enumerate(labels):
        sid = f"synth_{i:03d}"
        n_tumour = int(label) * int(rng.integers(1, 3))
        scene = make_scene(width, height, n_tissue=int(rng.integers(2, 4)), n_tumour=n_tumour, seed=seed * 1000 + i)
        write_synthetic_slide(root / "slides" / f"{sid}.tiff", scene, mpp=mpp, flavour=flavour)
        write_geojson(root / "annotations" / f"{sid}.geojson", scene.tumour, name="Tumor")
        rows.append({"slide_id": sid, "case_id": f"case_{i:03d}", "label": int(label)})
    out = root / "cohort.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide_id", "case_id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return out
