"""Slide-inference benchmarks.

1. Per-slide inference time split into preprocessing (open, segment, tile), feature extraction, model and
   rendering (heatmap + tiles GeoJSON + montage), on a synthetic slide (default 40k × 30k px at 0.25 µm/px,
   20× / 256-px patches, the tiny encoder, ABMIL with its default widths): a cold run (everything computed)
   and a run that reuses the training features recorded in the checkpoint.
2. Peak RAM while rendering the heatmap of a large synthetic slide (default 100k × 100k px at 0.25 µm/px,
   written tile by tile with an empty background so it stays small on disk). Each renderer runs in a fresh
   process; the kernel's peak-RSS mark is reset once the slide is open, so the peak is the rendering's own
   (imported libraries included). milkit (thumbnail-sized arrays only) against a CLAM-style baseline in the
   same run: float64 score and count canvases at the pyramid level closest to a 32× downsample, the whole
   level read at once, a Python loop over patches. For scale: a level-0 RGB canvas would take 30 GB.

    PYTHONPATH=$PWD python scripts/bench_infer.py            # full size
    PYTHONPATH=$PWD python scripts/bench_infer.py --quick    # small sizes, to check the script
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

SEG = {"_target_": "milkit.wsi.create_segmenter", "name": "hsv"}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; returns the current RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


# ---------------------------------------------------------------- 1. per-slide timings ------------------
def bench_timings(args: argparse.Namespace, work: Path) -> dict:
    import torch

    from milkit.data.sources import FeatureDirSource
    from milkit.inference import infer
    from milkit.inference.packaging import save_model_checkpoint
    from milkit.models import create_model
    from milkit.preprocess import preprocess
    from milkit.wsi.synthetic import make_scene, write_synthetic_slide

    w, h = args.slide
    slides = work / f"timing_{w}x{h}"
    slide = slides / "slide.tiff"
    if not slide.exists():
        write_synthetic_slide(slide, make_scene(w, h, n_tissue=4, n_tumour=2, seed=1), mpp=0.25)
    (work / "cohort.csv").write_text("slide_id,case_id,label\nslide,c0,1\n")
    weights = None if args.encoder == "tiny" else "random"  # other encoders: random weights (recorded as random:0)
    encoder = {"_target_": "milkit.features.create_encoder", "name": args.encoder, "weights": weights}
    feats = preprocess({"input": str(slides), "output": str(work / "train_features"), "encoder": encoder,
                        "segmenter": SEG, "num_workers": args.workers, "progress": False}) / f"features_{args.encoder}"
    source = FeatureDirSource(feats, work / "cohort.csv")
    torch.manual_seed(0)
    model = create_model("abmil", source.in_dim, 2)
    cfg = {"_target_": "milkit.models.create_model", "model_name": "abmil", "in_dim": source.in_dim, "num_classes": 2}
    ckpt = save_model_checkpoint(work / "bench.ckpt", model.eval(), cfg, ["0", "1"], source.feature_meta())
    runs = {}
    for name, reuse in (("cold", False), ("reused_features", True)):
        out = work / f"infer_{name}"
        shutil.rmtree(out, ignore_errors=True)
        infer({"slide": str(slide), "checkpoint": str(ckpt), "output": str(out), "reuse": reuse,
               "num_workers": args.workers, "progress": False, "encoder": {"weights": weights}})
        rec = json.loads((out / "slides" / "slide" / "prediction.json").read_text())
        runs[name] = {"instances": rec["num_instances"], **rec["timings_s"]}
    print(f"\n== per-slide inference, {w}x{h} px @0.25 µm/px, 20x/256 px, encoder {args.encoder}, "
          f"{args.workers} reader worker(s) ==")
    print(f"{'run':<18}{'tiles':>7}{'preproc s':>11}{'extract s':>11}{'model s':>9}{'render s':>10}{'total s':>9}")
    for name, r in runs.items():
        print(f"{name:<18}{r['instances']:>7}{r['preprocessing']:>11.2f}{r['extraction']:>11.2f}{r['model']:>9.3f}"
              f"{r['rendering']:>10.2f}{r['total']:>9.2f}")
    return runs


# ---------------------------------------------------------------- 2. rendering RAM ----------------------
def _milkit_render(path: str, coords: np.ndarray, size0: float, scores: np.ndarray, out: str) -> dict:
    from milkit.inference.export import montage, write_tiles_geojson
    from milkit.inference.heatmap import rank_normalise, render_heatmap, write_png
    from milkit.wsi.readers import open_slide

    t = [time.perf_counter()]
    with open_slide(path) as reader:
        base = _reset_peak()
        hm = render_heatmap(reader, coords, size0, scores)
        write_png(Path(out) / "heatmap.png", hm.image)
        t.append(time.perf_counter())
        write_tiles_geojson(Path(out) / "tiles.geojson", coords, size0, {"score": scores,
                                                                       "rank": rank_normalise(scores)})
        t.append(time.perf_counter())
        write_png(Path(out) / "montage.png", montage(reader, coords, scores, 0, int(size0), 256))
        t.append(time.perf_counter())
    return {"heatmap_px": list(hm.image.shape[:2]), "heatmap_s": t[1] - t[0], "geojson_s": t[2] - t[1],
            "montage_s": t[3] - t[2], "rss_before_mb": base}


def _clam_style_render(path: str, coords: np.ndarray, size0: float, scores: np.ndarray, out: str) -> dict:
    from milkit.inference.heatmap import colormap_lut, rank_normalise, write_png
    from milkit.wsi.readers import open_slide

    t0 = time.perf_counter()
    with open_slide(path) as reader:
        base = _reset_peak()
        level = int(np.argmin([abs(d - 32) for d in reader.level_downsamples]))
        ds, (w, h) = reader.level_downsamples[level], reader.level_dimensions[level]
        overlay, counter = np.zeros((h, w)), np.zeros((h, w), np.uint16)
        s = int(size0 / ds)
        for (x, y), v in zip((coords / ds).astype(int), rank_normalise(scores)):
            overlay[y:y + s, x:x + s] += v
            counter[y:y + s, x:x + s] += 1
        shown = counter > 0
        overlay[shown] /= counter[shown]
        img = reader.read_region((0, 0), level, (w, h))
        colour = colormap_lut("jet")[np.round(overlay * 255).astype(np.intp)]
        img[shown] = (0.5 * colour[shown] + 0.5 * img[shown]).astype(np.uint8)
        write_png(Path(out) / "heatmap_clam.png", img)
    return {"heatmap_px": [h, w], "heatmap_s": time.perf_counter() - t0, "rss_before_mb": base, "level": level}


def _child(name: str, args: tuple, queue: mp.Queue) -> None:
    import matplotlib  # noqa: F401 - both renderers use them; load before timing
    import scipy.stats  # noqa: F401

    res = (_milkit_render if name == "milkit" else _clam_style_render)(*args)
    res["peak_rss_mb"] = _status_mb("VmHWM")  # since _reset_peak: the rendering's own high-water mark
    res["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports included
    queue.put(res)


def bench_ram(args: argparse.Namespace, work: Path) -> dict:
    from milkit.wsi.geojson import rasterize
    from milkit.wsi.readers import open_slide
    from milkit.wsi.synthetic import make_scene, write_synthetic_slide
    from milkit.wsi.tiling import plan_geometry, polygon_fractions, select_patches

    w, h = args.big
    path = work / f"big_{w}x{h}.tiff"
    scene = make_scene(w, h, n_tissue=6, n_tumour=2, seed=0)
    if not path.exists():
        t0 = time.perf_counter()
        write_synthetic_slide(path, scene, mpp=0.25, quality=60, sparse_background=True)
        print(f"built {path.name}: {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 2**20:.0f} MiB")
    with open_slide(path) as r:
        geom = plan_geometry(r, 0.5, 256, 0)
        tw, th = r.thumbnail_size(16.0)
        scale = (w / tw, h / th)
        coords = select_patches(geom, rasterize(scene.tissue, (th, tw), scale), scale, 0.25)
    size0 = float(geom.patch_size_level0)
    rng = np.random.default_rng(0)
    scores = polygon_fractions(scene.tumour, coords, size0, (w, h)) + 0.1 * rng.random(len(coords))
    res = {"slide_px": [w, h], "patches": len(coords), "level0_rgb_canvas_gb": w * h * 3 / 1e9}
    ctx = mp.get_context("spawn")
    for name in ("milkit", "clam_style"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, (str(path), coords, size0, scores, str(work)), queue))
        proc.start()
        res[name] = queue.get()
        proc.join()
    m, c = res["milkit"], res["clam_style"]
    print(f"\n== heatmap rendering of a {w}x{h} px slide ({len(coords)} patches); level-0 RGB canvas would be "
          f"{res['level0_rgb_canvas_gb']:.0f} GB ==")
    print(f"{'renderer':<12}{'image px':>14}{'seconds':>9}{'RSS before MB':>15}{'peak RSS MB':>13}{'delta MB':>10}")
    for name, r in (("milkit", m), ("clam_style", c)):
        print(f"{name:<12}{'x'.join(map(str, r['heatmap_px'])):>14}{r['heatmap_s']:>9.2f}{r['rss_before_mb']:>15.0f}"
              f"{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] - r['rss_before_mb']:>10.0f}")
    print(f"milkit tiles GeoJSON {m['geojson_s']:.2f} s, montage (8+8 patches) {m['montage_s']:.2f} s; "
          f"peak RSS milkit / CLAM-style = {m['peak_rss_mb'] / c['peak_rss_mb']:.2f}, "
          f"time ratio = {m['heatmap_s'] / c['heatmap_s']:.2f}")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes to check the script")
    p.add_argument("--workdir", default=os.environ.get("MILKIT_BENCH_DIR", "data/generated/bench_infer"))
    p.add_argument("--encoder", default="tiny", help="tiny, or e.g. resnet50_trunc (random weights)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers reading tiles")
    p.add_argument("--skip", nargs="*", default=[], choices=["timings", "ram"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.slide = (8_192, 6_144) if args.quick else (40_000, 30_000)
    args.big = (20_000, 20_000) if args.quick else (100_000, 100_000)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    results = {}
    if "timings" not in args.skip:
        results["timings"] = bench_timings(args, work)
    if "ram" not in args.skip:
        results["ram"] = bench_ram(args, work)
    if args.json:
        from milkit.utils.io import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=1, default=float))

