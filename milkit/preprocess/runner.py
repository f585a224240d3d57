"""``preprocess(cfg)``: run segment / tile / extract over a cohort, resumable and shardable.

Output layout (TRIDENT-style, docs/architecture.md): ``<output>/<20x|0.3mpp>_<ps>px_<ovl>px_overlap/{contours_geojson,
thumbnails, patches, features_<encoder>}/`` plus ``manifest.csv`` (``manifest_shard<i>of<n>.csv`` when
sharded). A slide that fails (corrupt or unsupported file, no MPP, unreadable tiles) is recorded in the
manifest and the run goes on; configuration errors stop the run at once.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from milkit.errors import ConfigError, OutputError, RunInterrupted, storage_error_line
from milkit.features.encoders import PatchEncoder, create_encoder
from milkit.features.extract import resolve_device
from milkit.preprocess.cohort import in_hydra_multirun, merge_manifests, resolve_shard, shard_manifest_name
from milkit.preprocess.manifest import Manifest, ManifestRow, one_line
from milkit.preprocess.slides import DEFAULT_EXTENSIONS, SlideEntry, discover_slides, shard_slides
from milkit.preprocess.stages import SlidePaths, extract_stage, segment_stage, tile_stage
from milkit.utils.io import writable_dir
from milkit.utils.signals import raise_keyboard_interrupt, signal_stops_the_run
from milkit.wsi.readers import open_slide
from milkit.wsi.segment import Segmenter, create_segmenter

log = logging.getLogger(__name__)

__all__ = ["Settings", "preprocess", "run_tag", "process_slide"]

STAGES = ("segment", "tile", "extract")


@dataclass
class Settings:
    """Top-level keys of ``milkit/conf/preprocess.yaml`` (the ``encoder``/``segmenter`` groups are built apart)."""

    input: str
    output: str
    stages: tuple[str, ...] = STAGES
    reader: str = "auto"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    recursive: bool = False
    slide_mpp: float | None = None
    force_mpp: bool = False
    target_mpp: float = 0.5
    patch_size: int = 256
    overlap: int = 0
    min_tissue: float = 0.25
    tissue_geojson: str | None = None
    annotations: str | None = None
    label_min_fraction: float = 0.5
    batch_size: int | None = None
    num_workers: int | None = None
    device: str = "auto"
    cpu_threads: int | str | None = "auto"
    precision: str | None = None
    feature_dtype: str = "float32"
    shard: int | None = None        # None: the SLURM array task, else 0 (see preprocess.cohort.resolve_shard)
    num_shards: int | None = None
    merge: bool = True              # a sharded run merges the shard manifests into manifest.csv when it ends
    progress: bool = True

    @classmethod
    def from_cfg(cls, cfg: DictConfig | dict[str, Any]) -> "Settings":
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        names = {f.name for f in fields(cls)}
        for key in ("input", "output"):
            if data.get(key) in (None, "???"):
                raise ConfigError(f"{key} is required (e.g. {key}=/path/to/{'slides' if key == 'input' else 'out'})")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        bad = [s for s in kw.get("stages", STAGES) if s not in STAGES]
        if bad and tuple(kw["stages"]) != ("merge",):
            raise ConfigError(f"stages: unknown {', '.join(bad)} (use {', '.join(STAGES)}, or [merge] alone)")
        return cls(**kw)


def run_tag(target_mpp: float, patch_size: int, overlap: int) -> str:
    """``20x_256px_0px_overlap`` when 10/mpp is a whole magnification, else ``0.3mpp_256px_0px_overlap``."""
    mag = 10.0 / target_mpp
    res = f"{round(mag)}x" if abs(mag - round(mag)) < 1e-6 else f"{target_mpp:g}mpp"
    return f"{res}_{patch_size}px_{overlap}px_overlap"


def _build(node: Any, default: Any) -> Any:
    """Call a group's ``_target_`` (or ``default``) with its keys; errors keep their own one-line type."""
    if node is None:
        return None
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    target = data.pop("_target_", None)
    if target is None:
        return default(**data)
    from hydra.utils import get_method

    return get_method(target)(**data)


def remove_stale_tmp(final: Path) -> None:
    """Delete temporary siblings of ``final`` left by killed processes on this host (pid no longer alive)."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(\d+)\.[0-9a-f]+\.tmp$")
    if not final.parent.is_dir():
        return
    for tmp in final.parent.iterdir():
        m = pattern.match(tmp.name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, owned by someone else


def process_slide(entry: SlideEntry, st: Settings, root: Path, seg: Segmenter, encoder: PatchEncoder | None,
                  device: Any) -> ManifestRow:
    """All requested stages for one slide; failures become a ``failed`` row."""
    t0 = time.perf_counter()
    paths = SlidePaths.under(root, entry.slide_id, encoder.spec.name if encoder else None)
    row = ManifestRow(entry.slide_id, str(entry.path), "ok")
    done: list[str] = []
    try:
        for p in paths.all():
            remove_stale_tmp(p)
        user = Path(st.tissue_geojson) / f"{entry.slide_id}.geojson" if st.tissue_geojson else None
        tissue = user if user is not None and user.is_file() else paths.geojson
        with open_slide(entry.path, st.reader, mpp=entry.mpp or st.slide_mpp, force_mpp=st.force_mpp) as reader:
            if "segment" in st.stages and segment_stage(reader, seg, paths, None if tissue == paths.geojson else tissue):
                done.append("segment")
            if "tile" in st.stages:
                row.tiles, did = tile_stage(reader, seg, tissue, paths, st.target_mpp, st.patch_size, st.overlap,
                                            st.min_tissue)
                done += ["tile"] if did else []
            if "extract" in st.stages and encoder is not None:
                ann = Path(st.annotations) / f"{entry.slide_id}.geojson" if st.annotations else None
                with tqdm(desc=entry.slide_id, unit="tile", leave=False, disable=not st.progress) as bar:
                    batch = st.batch_size or (256 if device.type == "cuda" else 32)
                    row.tiles, secs = extract_stage(
                        reader, encoder, paths, ann, st.label_min_fraction, progress=bar, batch_size=batch,
                        num_workers=st.num_workers, device=device, precision=st.precision,
                        feature_dtype=st.feature_dtype, threads=st.cpu_threads)
                if secs is not None:
                    done.append("extract")
                    row.tiles_per_s = row.tiles / max(secs, 1e-9)
        if row.tiles == 0:
            row.status = "no_tissue"
        elif not done:
            row.status = "skipped"
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any per-slide failure is recorded and the run goes on
        row.status, row.error = "failed", one_line(exc)
    row.stages, row.seconds = "+".join(done), time.perf_counter() - t0
    return row


def _record(manifest: Manifest, row: ManifestRow, done: int, total: int) -> None:
    """Add ``row`` to the manifest; when even the manifest cannot be written (disk full), stop with one line."""
    try:
        manifest.add(row)
    except OSError as exc:
        reason = storage_error_line(exc, manifest.path)
        if reason is None:
            raise
        raise OutputError(f"{reason}; stopped after {done} of {total} slides (rerun to go on)") from None


def _stopped(where: str, done: int, total: int, manifest: Manifest) -> RunInterrupted:
    return RunInterrupted(f"preprocessing stopped {where} ({done} of {total} done, listed in {manifest.path}; a "
                          f"rerun redoes only what is missing)")


def preprocess(cfg: DictConfig | dict[str, Any]) -> Path:
    """Run the configured stages over the (sharded) cohort; returns the output folder of this resolution.
    ``stages=[merge]`` only merges the shard manifests of ``num_shards`` shards into ``manifest.csv``."""
    st = Settings.from_cfg(cfg)
    st.shard, st.num_shards = resolve_shard(st.shard, st.num_shards, in_hydra_multirun())
    root = Path(st.output).expanduser() / run_tag(st.target_mpp, st.patch_size, st.overlap)
    cohort = discover_slides(st.input, st.extensions, st.recursive)
    if st.stages == ("merge",):
        log.info(merge_manifests(root, cohort, st.num_shards).summary())
        return root
    seg = _build(cfg.get("segmenter"), create_segmenter) or create_segmenter()
    encoder = _build(cfg.get("encoder"), create_encoder) if "extract" in st.stages else None
    if "extract" in st.stages and encoder is None:
        raise ConfigError("stage 'extract' needs an encoder (e.g. encoder=tiny or encoder=uni)")
    root = writable_dir(root)
    entries = shard_slides(cohort, st.shard, st.num_shards)
    manifest = Manifest(root / shard_manifest_name(st.shard, st.num_shards))
    device = resolve_device(st.device, st.shard) if encoder is not None else None
    # Ctrl-C raises KeyboardInterrupt as usual; its flag also stops the run after the slide when the exception was
    # swallowed (raised inside a library's __del__ or weakref callback, the likely cause of a lost Ctrl-C)
    with signal_stops_the_run(signal.SIGINT, "", raise_keyboard_interrupt, KeyboardInterrupt) as ctrl_c:
        for i, entry in enumerate(tqdm(entries, desc="slides", unit="slide", disable=not st.progress)):
            try:
                row = process_slide(entry, st, root, seg, encoder, device)
                _record(manifest, row, i, len(entries))
            except KeyboardInterrupt:
                raise _stopped(f"at slide {entry.slide_id}", i, len(entries), manifest) from None
            if ctrl_c.fired:
                raise _stopped(f"after slide {entry.slide_id}", i + 1, len(entries), manifest)
            if row.status == "failed":
                tqdm.write(f"failed {entry.slide_id}: {row.error}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(manifest.counts().items())) or "no slides"
    log.info(f"preprocess: {counts} → {root} (manifest: {manifest.path})")
    if st.num_shards > 1 and st.merge:
        log.info(merge_manifests(root, cohort, st.num_shards).summary())
    return root
