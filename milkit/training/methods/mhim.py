"""MHIM-MIL: masked hard instance mining with a momentum teacher (Tang et al., ICCV 2023; IJCV 2025 "v2").

Per training step: a frozen momentum teacher (same architecture as the student) scores every real instance of
the bag; the most salient instances are masked (plus, in v1, random and low-score masks); the student is
trained on the remaining *hard* instances with the task loss plus a consistency loss between the teacher's
(all instances) and the student's bag embeddings; after every optimiser step the teacher follows the student
by EMA. Validation, test and inference use the student on all instances (``eval_forward`` is the default).

Works with any registered model that returns instance scores. Scores used for masking (``score``):

* ``attention`` (v1): per-head attention ``extras["attention"][attn_layer]`` ``(B, H, N)`` when the model
  exposes a per-layer list (TransMIL; heads fused by voting); else the model's ``instance_scores`` (ABMIL:
  attention logits; DSMIL: the max-class instance-classifier logit, which is what MHIM-MIL masks by).
* ``class_aware`` (v2): ``s_i = max_c p(c | instance i)``, the classifier applied to the instance alone:
  ``softmax(extras["instance_logits"])``, or the head applied to the model's ``instance_contributions(h, mask,
  feats)`` (a model's per-instance shares of its bag embedding:
  TransMIL's layer-1 cls attention × values through ``to_out``, as upstream's ``get_pseudo_score_trans``),
  or, for attention pooling, to ``a_i·h_i`` with ``h`` = ``extras["pooled_instances"]`` when the model pools
  other features than its aggregate's input (MambaMIL: after the Mamba layers), checked once that ``Σ_i a_i·h_i``
  is the bag embedding). ``C = 1``: ``max(σ, 1-σ)``. Under ``task=survival`` the instance's *risk* replaces
  ``max_c p``, so the highest-risk instances are the salient ones that get masked.
  As upstream, the head's class-0 bias is added to every output (also under survival), so the bias cancels
  (``class_aware_bias="class0"``); ``"own"`` adds each output's own bias instead.

Deliberate deviations from the upstream code (DearCaat/MHIM-MIL), following the paper where they differ:

* the teacher runs in eval mode (paper Alg. 1); upstream runs it in train mode with dropout — set
  ``teacher_train_mode=true`` to reproduce the code;
* a baseline checkpoint that does not fit raises ``ConfigError`` (upstream loads ``strict=False`` and
  swallows errors, which silently trains from scratch);
* the kept instances keep their original order (upstream: Python ``set`` order); ratios count
  ``ceil(n·r)`` with a float tolerance; at least one instance per bag is always kept;
* ``init_student="fc"`` copies the student's ``embed`` module (the first FC of MHIM's models); the other
  student weights keep milkit's initialisation (upstream re-initialises them with xavier-normal).

The EMA momentum and β_h schedules run over ``StepContext.max_steps`` (all optimiser steps of
``trainer.max_epochs``), as upstream sizes them for ``num_epoch``: early stopping truncates them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from milkit.errors import ConfigError
from milkit.models.base import MILModel
from milkit.models.layers.masked import mask_scores, masked_softmax
from milkit.models.layers.recycle import GlobalRecycleNetwork
from milkit.training.methods.base import StepContext, StepResult, TrainingMethod, model_losses
from milkit.training.methods.masking import (cosine_decay, gather_instances, keep_at_least_one, mhim_drop_mask,
                                             random_select, ratio_count)
from milkit.training.methods.teacher import copy_prefix_, ema_update_, load_student_state
from milkit.types import BagBatch, BagFeatures, MILOutput

__all__ = ["MHIM", "MHIMv2", "soft_target_cross_entropy", "class_probability"]


def soft_target_cross_entropy(student: Tensor, teacher: Tensor, temp_student: float = 1.0,
                              temp_teacher: float = 0.1) -> Tensor:
    """``mean(-Σ_d softmax(t/τ_t)_d · log_softmax(s/τ_s)_d)`` over the embedding dimension ``d`` (last axis);
    per-class embeddings ``(B, C, D)`` are averaged over ``C`` too."""
    target = F.softmax(teacher.detach().float() / temp_teacher, dim=-1)
    return -(target * F.log_softmax(student.float() / temp_student, dim=-1)).sum(-1).mean()


def class_probability(logits: Tensor) -> Tensor:
    """``max_c p_c`` of logits ``(..., C)``; for one logit, ``max(σ, 1-σ)``."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits[..., 0])
        return torch.maximum(p, 1 - p)
    return logits.softmax(-1).amax(-1)


def _check(name: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    if not (low < value <= high if low_open else low <= value <= high):
        raise ConfigError(f"method.{name} must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def _choice(name: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"method.{name} must be one of {', '.join(options)}, got '{value}'")
    return value


class MHIM(TrainingMethod):
    """MHIM-MIL v1 (``method=mhim``). Defaults: the paper's CAMELYON-16 ABMIL recipe (R-HAM).

    Args:
        mask_ratio_high: β_h, fraction of instances masked by highest teacher score.
        high_random_frac: β_hr; β_h is drawn at random from the top β_h/β_hr ("randomly HAM").
        high_decay: ``cosine`` decays β_h to 0 over training; ``none`` keeps it.
        mask_ratio_low: β_l, fraction masked by lowest score.  mask_ratio_rand: β_r, uniform random masking.
        score: ``attention`` or ``class_aware`` (see the module docstring).  attn_layer: layer of multi-head attention.
        consistency_weight: α of the consistency loss.  temp_teacher / temp_student: τ_t, τ_s.
        momentum: EMA factor m.  momentum_schedule: ``cosine`` raises m to ``momentum_final`` over training.
        teacher_init: baseline checkpoint that initialises the teacher (``None``: a copy of the student).
        init_student: what the student takes from that checkpoint: ``fc`` (its ``embed``), ``all``, ``none``.
        teacher_train_mode: run the teacher with dropout active (upstream code) instead of eval mode (paper).
        class_aware_bias: ``class0`` (upstream: bias of class 0 on every class, i.e. no bias gap) or ``own``.
    """

    needs_instance_scores = True

    def __init__(self, mask_ratio_high: float = 0.01, high_random_frac: float = 0.5, high_decay: str = "cosine",
                 mask_ratio_low: float = 0.0, mask_ratio_rand: float = 0.5, score: str = "attention",
                 attn_layer: int = 0, consistency_weight: float = 0.1, temp_teacher: float = 0.1,
                 temp_student: float = 1.0, momentum: float = 0.9999, momentum_schedule: str = "none",
                 momentum_final: float = 1.0, teacher_init: str | None = None, init_student: str = "fc",
                 teacher_train_mode: bool = False, class_aware_bias: str = "class0") -> None:
        super().__init__()
        self.mask_ratio_high = _check("mask_ratio_high", mask_ratio_high, 0, 1)
        self.high_random_frac = _check("high_random_frac", high_random_frac, 0, 1, low_open=True)
        self.high_decay = _choice("high_decay", high_decay, ("none", "cosine"))
        self.mask_ratio_low = _check("mask_ratio_low", mask_ratio_low, 0, 1)
        self.mask_ratio_rand = _check("mask_ratio_rand", mask_ratio_rand, 0, 1)
        self.score = _choice("score", score, ("attention", "class_aware"))
        self.attn_layer = int(attn_layer)
        self.consistency_weight = _check("consistency_weight", consistency_weight, 0, float("inf"))
        self.temp_teacher = _check("temp_teacher", temp_teacher, 0, float("inf"), low_open=True)
        self.temp_student = _check("temp_student", temp_student, 0, float("inf"), low_open=True)
        self.momentum = _check("momentum", momentum, 0, 1)
        self.momentum_schedule = _choice("momentum_schedule", momentum_schedule, ("none", "cosine"))
        self.momentum_final = _check("momentum_final", momentum_final, 0, 1)
        self.teacher_init = teacher_init
        self.init_student = _choice("init_student", init_student, ("none", "fc", "all"))
        self.teacher_train_mode = bool(teacher_train_mode)
        self.class_aware_bias = _choice("class_aware_bias", class_aware_bias, ("class0", "own"))
        self.teacher: MILModel | None = None
        self._pooling_checked = False

    # ---- set-up and schedules -------------------------------------------------------------------------------
    def setup(self, model: MILModel) -> None:
        """Build the teacher (a frozen copy of the student, or the baseline checkpoint) and init the student."""
        self.teacher = copy.deepcopy(model)
        if self.teacher_init:
            state = load_student_state(self.teacher_init)
            copy_prefix_(self.teacher, state, "", source=f"method.teacher_init={self.teacher_init}")
            if self.init_student != "none":
                prefix = "embed." if self.init_student == "fc" else ""
                copy_prefix_(model, state, prefix, source=f"method.init_student={self.init_student}")
        self.teacher.requires_grad_(False)

    def current_mask_ratio_high(self, ctx: StepContext) -> float:
        return cosine_decay(self.mask_ratio_high, 0.0, ctx.progress) if self.high_decay == "cosine" else \
            self.mask_ratio_high

    def current_momentum(self, ctx: StepContext) -> float:
        if self.momentum_schedule == "cosine":
            return cosine_decay(self.momentum, self.momentum_final, ctx.progress)
        return self.momentum

    # ---- teacher ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_view(self, batch: BagBatch) -> tuple[Tensor, Tensor]:
        """Teacher scores ``(B, N)`` or ``(B, H, N)`` and bag embedding on all instances."""
        if self.teacher is None:
            raise ConfigError("MHIM.setup(model) must be called before training")
        # the teacher follows the method's train/eval state between steps (Lightning checks modes), and
        # runs its forward in eval mode (paper) or train mode (released code)
        self.teacher.train(self.teacher_train_mode)
        try:
            h = self.teacher.reembed(self.teacher.embed(batch.x), batch.mask)
            feats = self.teacher.aggregate(h, batch.mask, batch.coords)
            scorer = self._class_aware_scores if self.score == "class_aware" else self._attention_scores
            return scorer(h, feats, batch.mask), feats.bag_embedding
        finally:
            self.teacher.train(self.training)

    def _attention_scores(self, h: Tensor, feats: BagFeatures, mask: Tensor) -> Tensor:  # noqa: ARG002
        layers = feats.extras.get("attention")
        if isinstance(layers, (list, tuple)):  # per-layer multi-head attention (TransMIL)
            attn = layers[self.attn_layer]
            if attn.dim() != 3 or attn.shape[-1] != mask.shape[1]:
                raise ConfigError(f"extras['attention'] must hold (B, H, N) tensors, got {tuple(attn.shape)}")
            return attn
        if feats.instance_scores is None:
            raise ConfigError("MHIM needs a model that returns instance scores")
        return feats.instance_scores

    def _class_aware_scores(self, h: Tensor, feats: BagFeatures, mask: Tensor) -> Tensor:
        score = class_probability if self.task is None else self.task.instance_score  # survival: the risk
        if feats.extras.get("instance_logits") is not None:
            return score(feats.extras["instance_logits"])
        shares = None
        if hasattr(self.teacher, "instance_contributions"):  # e.g. TransMIL
            shares = self.teacher.instance_contributions(h, mask, feats)
        if shares is None:
            if feats.instance_scores is None:
                raise ConfigError("method.score=class_aware needs a model that returns instance scores")
            seen = feats.extras.get("pooled_instances", h)  # what the pool saw (MambaMIL: post-Mamba)
            shares = masked_softmax(feats.instance_scores, mask).unsqueeze(-1) * seen  # a_i·h_i  (B, N, E)
            if not self._pooling_checked:
                pooled = shares.sum(1)
                # loose enough for bf16 autocast; a model that is not attention pooling is far off
                if pooled.shape != feats.bag_embedding.shape or not torch.allclose(
                        pooled.float(), feats.bag_embedding.float(), rtol=2e-2, atol=1e-3):
                    raise ConfigError(f"method.score=class_aware: {type(self.teacher).__name__} is not attention "
                                      "pooling and has neither extras['instance_logits'] nor an "
                                      "instance_contributions method; use method.score=attention")
                self._pooling_checked = True
        b, n, e = shares.shape
        logits = self.teacher.forward_head(BagFeatures(bag_embedding=shares.reshape(b * n, e)))
        if self.class_aware_bias == "class0":
            # upstream: W·(a_i h_i) + bias[0] for every class. Subtracting head(0) = bias leaves W·(a_i h_i), the
            # same softmax; for one logit the score is then σ(|w·a_i h_i|), upstream's two-class score with
            # w = w_1 - w_0. Since a_i·h_i is O(1/N), a kept bias gap would dominate the score and rank
            # instances by signed evidence instead of its magnitude. Exact for affine heads (all of milkit's).
            logits = logits - self.teacher.forward_head(BagFeatures(bag_embedding=shares.new_zeros(1, e)))
        return score(logits.view(b, n, -1))

    # ---- training step ---------------------------------------------------------------------------------------
    def drop_mask(self, scores: Tensor, mask: Tensor, ctx: StepContext) -> Tensor:
        """Instances to mask, ``(B, N)`` bool, from the teacher's scores."""
        return mhim_drop_mask(scores, mask, high=self.current_mask_ratio_high(ctx),
                              high_random_frac=self.high_random_frac, low=self.mask_ratio_low,
                              rand=self.mask_ratio_rand)

    def student_forward(self, model: MILModel, batch: BagBatch, keep: Tensor) -> tuple[MILOutput, Tensor]:
        """The student on the kept instances only, re-collated into a smaller padded batch.
        Returns its output and the ``(B, N)`` instances it saw."""
        mask, (x, coords) = gather_instances(keep, batch.x, batch.coords)
        return model(x, mask, coords), keep

    def training_step(self, model: MILModel, batch: BagBatch, ctx: StepContext) -> StepResult:
        scores, teacher_embedding = self.teacher_view(batch)
        keep = batch.mask & ~self.drop_mask(scores, batch.mask, ctx)
        out, seen = self.student_forward(model, batch, keep)
        if out.bag_embedding is None:
            raise ConfigError("MHIM needs a model that returns MILOutput.bag_embedding")
        consistency = soft_target_cross_entropy(out.bag_embedding, teacher_embedding, self.temp_student,
                                                self.temp_teacher)
        terms = {"task_loss": self.task_loss(out.logits, batch.y), **model_losses(model, out, batch.y, self.task)}
        loss = sum(terms.values()) + self.consistency_weight * consistency
        logs = {name: value.detach() for name, value in terms.items()}
        logs["consistency"] = consistency.detach()
        logs["seen_fraction"] = (seen.sum() / batch.mask.sum().clamp_min(1)).float()
        return StepResult(loss=loss, output=out, logs=logs)

    @torch.no_grad()
    def on_optimizer_step(self, model: MILModel, ctx: StepContext) -> None:
        ema_update_(self.teacher, model, self.current_momentum(ctx))


class MHIMv2(MHIM):
    """MHIM-MIL v2 (``method=mhim_v2``): class-aware scores, high-score masking, then large-scale random
    masking whose instances are recycled by a global recycle network into ``n_global_queries`` tokens that
    are appended to the student's instances (training only; inference uses the student on all instances).

    ``recycle_ratio`` is the fraction of the instances left after high-score masking that is masked and
    recycled. The paper calls this "large-scale random masking"; the released code's ``--merge_ratio`` is
    the *kept* fraction (its default 0.2 keeps 20%, i.e. ``recycle_ratio=0.8``; its README grid 0.8/0.9
    corresponds to ``recycle_ratio`` 0.2/0.1). Defaults follow the released README (``mm`` 0.9997 without
    schedule, no β_h decay, α = 0.5, query momentum 0.9999, student not initialised from the baseline).
    """

    def __init__(self, recycle_ratio: float = 0.8, n_global_queries: int = 1, query_momentum: float = 0.9999,
                 grn_heads: int = 8, grn_dim_head: int = 64, grn_dropout: float = 0.1, *,
                 mask_ratio_high: float = 0.01, high_random_frac: float = 1.0, high_decay: str = "none",
                 mask_ratio_rand: float = 0.0, score: str = "class_aware", consistency_weight: float = 0.5,
                 momentum: float = 0.9997, init_student: str = "none", **kwargs) -> None:
        super().__init__(mask_ratio_high=mask_ratio_high, high_random_frac=high_random_frac, high_decay=high_decay,
                         mask_ratio_rand=mask_ratio_rand, score=score, consistency_weight=consistency_weight,
                         momentum=momentum, init_student=init_student, **kwargs)
        self.recycle_ratio = _check("recycle_ratio", recycle_ratio, 0, 1)
        self.grn_kwargs = {"n_queries": int(n_global_queries), "heads": int(grn_heads), "dim_head": int(grn_dim_head),
                           "dropout": float(grn_dropout), "momentum": _check("query_momentum", query_momentum, 0, 1)}
        self.grn: GlobalRecycleNetwork | None = None

    def setup(self, model: MILModel) -> None:
        super().setup(model)
        self.grn = GlobalRecycleNetwork(model.embed_dim, **self.grn_kwargs)

    def student_forward(self, model: MILModel, batch: BagBatch, keep: Tensor) -> tuple[MILOutput, Tensor]:
        recycle = keep_at_least_one(random_select(keep, ratio_count(keep.sum(1), self.recycle_ratio)), keep)
        mask_k, (x_k, coords_k) = gather_instances(keep & ~recycle, batch.x, batch.coords)
        mask_r, (x_r,) = gather_instances(recycle, batch.x)
        tokens, valid = self.grn(model.embed(x_r), mask_r)  # (B, k, E), (B,)
        self.grn.update_queries(tokens, valid)
        # kept instances, then the tokens; re-packed so that every bag's real rows stay a prefix
        h = torch.cat([model.reembed(model.embed(x_k), mask_k), tokens], 1)
        mask = torch.cat([mask_k, valid.unsqueeze(1).expand_as(tokens[..., 0])], 1)
        if coords_k is not None:
            coords_k = torch.cat([coords_k, coords_k.new_zeros(tokens.shape[0], tokens.shape[1], 2)], 1)
        mask, (h, coords) = gather_instances(mask, h, coords_k)
        feats = model.aggregate(h, mask, coords)
        scores = None if feats.instance_scores is None else mask_scores(feats.instance_scores, mask)
        out = MILOutput(logits=model.forward_head(feats), instance_scores=scores, bag_embedding=feats.bag_embedding,
                        aux_losses=feats.aux_losses, extras=feats.extras)
        return out, keep & ~recycle
