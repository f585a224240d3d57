"""``SlidePredictor``: a checkpoint plus everything needed to turn one slide into a prediction.

Built from the checkpoint alone: the model and its training standardisation (``load_checkpoint``), and the
preprocessing recorded with the training features (``resolve_settings``): segmenter, target MPP, patch size,
overlap, tissue threshold and encoder with verified weights. For each slide it first looks for features it
can reuse (the training feature folder recorded in the checkpoint, then ``features_dirs``): a file is reused
only when its encoder, weights, dimension, patch geometry, tissue threshold and segmenter match and it was
made from a slide with the same level-0 size and MPP. Otherwise it runs the preprocessing stages
(``milkit.preprocess.stages``) into its own work folder, which a rerun reuses in turn.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from milkit.data.bag import Bag
from milkit.data.feature_files import FeatureFile, read_feature_file
from milkit.errors import DataError
from milkit.features.extract import resolve_device, resolve_precision
from milkit.inference.settings import (SlideSettings, build_encoder, build_segmenter, recorded_segmenter,
                                      resolve_settings)
from milkit.preprocess.runner import run_tag
from milkit.preprocess.stages import SlidePaths, extract_stage, segment_stage, tile_stage
from milkit.training.checkpoint import LoadedModel, load_checkpoint
from milkit.wsi.geojson import load_geojson
from milkit.wsi.h5 import read_coords, validate_features
from milkit.wsi.readers import SlideReader

__all__ = ["SlidePredictor", "PreparedSlide", "Prediction"]


@dataclass
class PreparedSlide:
    """Where the slide's features are, and how long getting them took."""

    features: Path
    tissue: Path | None            # tissue GeoJSON (level-0 polygons), when one exists
    reused_from: str | None        # folder the features were reused from; None = computed (or cached) here
    preprocessing_s: float
    extraction_s: float
    computed: tuple[str, ...] = ()  # stages that did work here (none: everything reused or cached)


@dataclass
class Prediction:
    probs: np.ndarray              # (C,); empty for non-classification tasks (their outputs are in ``extras``)
    scores: np.ndarray | None      # (N,) raw instance scores, None for models without them
    bag: FeatureFile
    model_s: float
    extras: dict[str, Any] = field(default_factory=dict)   # survival: risk (), survival (K,)


class SlidePredictor:
    """Args:
        checkpoint: a milkit checkpoint (``train(cfg)`` writes ``fold*/checkpoints/best.ckpt``).
        overrides: non-null values replace the recorded preprocessing (``target_mpp``, ``patch_size``,
            ``overlap``, ``min_tissue``, ``segmenter`` params, ``encoder`` name).
        weights, hub, verify_weights: encoder weights (a local file, checked against the recorded hash).
        reuse: look for reusable features in the recorded training folder and ``features_dirs``.
        device, precision, batch_size, num_workers: feature extraction.
    """

    def __init__(self, checkpoint: str | Path, overrides: dict[str, Any] | None = None, *, weights: str | None = None,
                 hub: bool = False, verify_weights: bool = True, reuse: bool = True,
                 features_dirs: Sequence[str | Path] = (), device: str = "auto", precision: str | None = None,
                 batch_size: int = 64, num_workers: int | None = 0) -> None:
        self.checkpoint = Path(checkpoint).expanduser().resolve()
        self.loaded: LoadedModel = load_checkpoint(self.checkpoint)
        meta = self.loaded.feature_meta
        self.settings: SlideSettings = resolve_settings(meta, overrides or {}, str(self.checkpoint))
        self.segmenter = build_segmenter(self.settings.segmenter)
        self.encoder = build_encoder(self.settings, self.loaded.model.in_dim, meta, weights, hub, verify_weights,
                                     str(self.checkpoint))
        self.device = resolve_device(device)
        self.precision = resolve_precision(self.encoder, self.device, precision)
        self.batch_size, self.num_workers = batch_size, num_workers
        roots = [Path(d) for d in features_dirs]
        if meta.get("feature_dir"):
            roots.insert(0, Path(meta["feature_dir"]).parent)
        self.reuse_roots = [r for r in roots if r.is_dir()] if reuse else []

    @property
    def tag(self) -> str:
        st = self.settings
        return run_tag(st.target_mpp, st.patch_size, st.overlap)

    def describe(self) -> dict[str, Any]:
        """Settings recorded in every per-slide JSON."""
        return {**self.settings.as_dict(), "weights_id": self.encoder.weights_id, "precision": self.precision,
                "device": str(self.device), "encoder_dim": self.encoder.dim}

    # ---- features -------------------------------------------------------------------------------------
    def _matches(self, path: Path, reader: SlideReader) -> bool:
        st = self.settings
        try:
            validate_features(path, dim=self.encoder.dim,
                              expected={"encoder": st.encoder, "weights_hash": self.encoder.weights_id})
            attrs = read_coords(path)[1]
        except DataError:
            return False
        want = {"patch_size": st.patch_size, "overlap": st.overlap, "target_mpp": st.target_mpp,
                "min_tissue": st.min_tissue, "level0_width": reader.dimensions[0],
                "level0_height": reader.dimensions[1], "level0_mpp": reader.mpp}
        if any(attrs.get(k) is None or not np.isclose(float(attrs[k]), float(v), rtol=1e-6) for k, v in want.items()):
            return False
        seg = recorded_segmenter(attrs)
        return seg is not None and (seg["name"] == "geojson" or seg == self.segmenter.params())

    def _drop_stale(self, paths: SlidePaths, reader: SlideReader) -> None:
        """Remove this slide's cached outputs in the work folder when they were made from another file with the
        same slide id (the tissue GeoJSON records the slide's path; coordinates its level-0 size and MPP)."""
        same = True
        if paths.geojson.is_file():
            try:
                recorded = load_geojson(paths.geojson).get("milkit", {}).get("slide")
            except (DataError, AttributeError):
                recorded = None
            same = recorded is None or recorded == str(reader.path)
        if same and paths.coords.is_file():
            try:
                attrs = read_coords(paths.coords)[1]
                same = (int(attrs["level0_width"]), int(attrs["level0_height"])) == tuple(reader.dimensions) and \
                    bool(np.isclose(float(attrs["level0_mpp"]), reader.mpp, rtol=1e-6))
            except (DataError, KeyError):
                same = False
        if not same:
            for p in paths.all():
                p.unlink(missing_ok=True)

    def prepare(self, reader: SlideReader, slide_id: str, work_root: Path, tissue_geojson: Path | None = None,
                progress: Any = None) -> PreparedSlide:
        """Reuse matching features or compute them under ``work_root/<tag>/`` (segment → tile → extract)."""
        t0 = time.perf_counter()
        enc = self.settings.encoder
        for root in self.reuse_roots if tissue_geojson is None else []:  # a user mask means other patches
            paths = SlidePaths.under(root, slide_id, enc)
            if paths.features.is_file() and self._matches(paths.features, reader):
                tissue = tissue_geojson or (paths.geojson if paths.geojson.is_file() else None)
                return PreparedSlide(paths.features, tissue, str(root), time.perf_counter() - t0, 0.0)
        paths = SlidePaths.under(work_root / self.tag, slide_id, enc)
        self._drop_stale(paths, reader)
        st = self.settings
        tissue = tissue_geojson if tissue_geojson is not None else paths.geojson
        done = ["segment"] if tissue_geojson is None and segment_stage(reader, self.segmenter, paths) else []
        _, tiled = tile_stage(reader, self.segmenter, tissue, paths, st.target_mpp, st.patch_size, st.overlap,
                              st.min_tissue)
        done += ["tile"] if tiled else []
        t1 = time.perf_counter()
        n, secs = extract_stage(reader, self.encoder, paths, None, 0.5, progress=progress, batch_size=self.batch_size,
                             num_workers=self.num_workers, device=self.device, precision=self.precision)
        if n == 0:
            raise DataError(f"{reader.path}: no tissue patch (min_tissue={st.min_tissue}, segmenter "
                            f"{json.dumps(self.settings.segmenter)})")
        done += ["extract"] if secs is not None else []
        return PreparedSlide(paths.features, tissue, None, t1 - t0, time.perf_counter() - t1, tuple(done))

    # ---- model ----------------------------------------------------------------------------------------
    def predict(self, features: Path, slide_id: str) -> Prediction:
        """The task's outputs (class probabilities; survival: risk and survival per bin) and raw instance scores
        for one features file."""
        ff = read_feature_file(features)
        t0 = time.perf_counter()
        coords = None if ff.coords is None else torch.from_numpy(ff.coords)
        out = self.loaded.forward_bag(Bag(torch.from_numpy(ff.features), None, slide_id, coords))
        reported = {k: v[0].float().numpy() for k, v in self.loaded.task.predict(out.logits).items()}
        probs = reported.pop("probs", np.zeros(0))
        scores = None if out.instance_scores is None else out.instance_scores[0].float().numpy()
        return Prediction(probs, scores, ff, time.perf_counter() - t0, reported)
