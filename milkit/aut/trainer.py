"""The training protocol of the official notebook, on padded batches of bags.

Official protocol (Raff & Holt's ``ReproducibilityMIL.ipynb``): features standardised with the mean and
(population) std of all training instances pooled; ``AdamW`` with PyTorch defaults; ``BCEWithLogits`` on a
single logit; every gradient element NaN → 0 then clamped to [-5, 5]; 20 epochs, no early stopping, no model
selection; train metrics accumulated *during* each epoch (train mode), test AUC in eval mode after every epoch.

Batches (``batching``):

* ``random`` (``protocol=fast``): a fresh random permutation every epoch, cut into ``batch_size`` bags.
* ``notebook``: the notebook's ``VariableBatchSampler``: the bags sorted by size (largest first, ties by
  index), cut once into batches of ``batch_size`` (its ``MAX_BATCH_SIZE = 32``), the batch order shuffled
  every epoch. On the class-ordered list almost every batch holds one class. The notebook's
  ``BATCH_SIZE = 1`` path crashes on torch 2.x for its max-pooling models; padded batches with masks run, and
  batch size 1 runs too (``batch_size=1``): the loss takes the ``(B, 1)`` logits as ``(B,)``.

The loss is the batch mean and the gradient clamp applies to the batch gradient. ``train_subset="official"``
reproduces the notebook's quirk: its sampler is built from the 80 % split but indexes the class-ordered list,
so it trains on the first 80 % of bags (all negatives and the first 3/5 of positives); ``"all"`` uses every bag.
``shuffle_within_bags`` permutes the real instances of every bag at every step (order-dependent models).
A ``TrainingMethod`` (MHIM ...) replaces plain supervised steps; its parameters join the optimiser.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from milkit.aut.bags import BagSet, Role
from milkit.errors import ConfigError
from milkit.models.base import MILModel
from milkit.training.methods import StepContext, Supervised, TrainingMethod
from milkit.types import BagBatch

__all__ = ["Protocol", "Standardized", "grid_coords", "make_batch", "notebook_batches", "positive_score", "predict",
           "shuffle_within_bags", "standardize", "train_and_evaluate"]


@dataclass
class Protocol:
    """How one model is trained on one test (defaults = the official notebook, batched)."""

    epochs: int = 20
    batch_size: int = 64
    loss: str = "bce"                 # "bce": one logit (num_classes=1); "ce": two-class cross-entropy
    grad_clamp: float | None = 5.0    # element-wise clamp after NaN → 0; None disables
    train_subset: str = "all"         # "all" | "official" (first 80 % of the class-ordered bags)
    batching: str = "random"          # "random" | "notebook" (size-sorted fixed batches, order shuffled)
    shuffle_within_bags: bool = False  # permute each bag's instances at every step
    train_metrics: str = "last_epoch"  # "last_epoch" (official, train mode) | "eval" (extra eval pass)
    optimizer: dict[str, Any] = field(default_factory=dict)  # AdamW keyword arguments; {} = PyTorch defaults
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        checks = {"loss": (self.loss, {"bce", "ce"}), "train_subset": (self.train_subset, {"all", "official"}),
                  "batching": (self.batching, {"random", "notebook"}),
                  "train_metrics": (self.train_metrics, {"last_epoch", "eval"})}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"{key}: '{value}' is not one of {sorted(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")

    @property
    def num_classes(self) -> int:
        return 1 if self.loss == "bce" else 2


@dataclass
class Standardized:
    """A ``BagSet`` as tensors after standardisation. x ``(n, N, d)``, mask ``(n, N)``, y ``(n,)``, roles ``(n, N)``."""

    x: Tensor
    mask: Tensor
    y: Tensor
    roles: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def standardize(train: BagSet, *others: BagSet) -> list[Standardized]:
    """Scale every set with the statistics of the pooled real training instances (sklearn ``StandardScaler``)."""
    real = train.x[train.mask].astype(np.float64)
    mean, std = real.mean(0), real.std(0)
    std[std == 0] = 1.0
    out = []
    for s in (train, *others):
        x = np.where(s.mask[..., None], (s.x - mean) / std, 0.0).astype(np.float32)
        out.append(Standardized(torch.from_numpy(x), torch.from_numpy(s.mask), torch.from_numpy(s.y),
                                torch.from_numpy(s.roles.astype(np.int64))))
    return out


def positive_score(logits: Tensor) -> Tensor:
    """The positive class's log-odds: the logit itself for ``C = 1``; ``l_pos - logsumexp(others)`` otherwise."""
    if logits.shape[-1] == 1:
        return logits[:, 0]
    return logits[:, -1] - torch.logsumexp(logits[:, :-1], dim=-1)


def grid_coords(n: int) -> Tensor:
    """Row-major grid positions ``(n, 2)`` for models that need coordinates (synthetic bags have none)."""
    w = max(1, math.ceil(math.sqrt(n)))
    i = torch.arange(n)
    return torch.stack([i % w, i // w], dim=-1).float()


def make_batch(x: Tensor, mask: Tensor, y: Tensor | None = None, needs_coords: bool = False) -> BagBatch:
    """Trim a padded slice to its longest bag; add grid coordinates when the model needs them."""
    n = int(mask.sum(1).max())
    x, mask = x[:, :n], mask[:, :n]
    coords = grid_coords(n).expand(x.shape[0], -1, -1) if needs_coords else None
    return BagBatch(x=x, mask=mask, y=y, coords=coords)


@torch.no_grad()
def predict(model: MILModel, data: Standardized, batch_size: int = 256,
            needs_coords: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Eval-mode positive scores ``(n,)`` and, when the model returns instance scores, the index of each bag's
    top-scoring instance ``(n,)``."""
    model.eval()
    scores, top = [], []
    for i in range(0, len(data), batch_size):
        batch = make_batch(data.x[i:i + batch_size], data.mask[i:i + batch_size], needs_coords=needs_coords)
        out = model(batch.x, batch.mask, batch.coords)
        scores.append(positive_score(out.logits))
        if out.instance_scores is not None:
            top.append(out.instance_scores.argmax(1))
    return torch.cat(scores).numpy(), (torch.cat(top).numpy() if top else None)


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    if not np.isfinite(s).all():
        raise FloatingPointError("non-finite bag scores")
    return float(roc_auc_score(y, s))


def notebook_batches(mask: Tensor, batch_size: int) -> list[Tensor]:
    """The notebook's ``VariableBatchSampler`` batches: bag indices sorted by size (descending, ties by index,
    as its heap of ``(-size, index)``) and cut into chunks of ``batch_size`` (its 5,000-instance cap never
    binds at these bag sizes)."""
    sizes = mask.sum(1).numpy()
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    return [torch.from_numpy(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def shuffle_within_bags(x: Tensor, mask: Tensor, g: torch.Generator) -> Tensor:
    """``x (B, N, D)`` with the real instances of every bag in random order (padding stays at the end)."""
    keys = torch.rand(mask.shape, generator=g).masked_fill(~mask, 2.0)
    order = keys.argsort(dim=1)
    return x.gather(1, order.unsqueeze(-1).expand_as(x))


def train_and_evaluate(model: MILModel, train: Standardized, test: Standardized, protocol: Protocol,
                       seed: int = 0, needs_coords: bool = False,
                       method: TrainingMethod | None = None) -> dict[str, Any]:
    """Train ``model`` on ``train`` for ``protocol.epochs`` (plain supervised steps, or ``method``'s) and score
    both sets; returns a metrics dict with per-epoch curves ``train_auc_curve`` (accumulated during the epoch)
    and ``test_auc_curve`` (eval mode after the epoch)."""
    g = torch.Generator().manual_seed(seed)
    n = len(train) if protocol.train_subset == "all" else int(round(0.8 * len(train)))
    method = method if method is not None else Supervised()
    method.setup(model)
    params = [p for p in [*model.parameters(), *method.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, **protocol.optimizer)
    fixed = notebook_batches(train.mask[:n], protocol.batch_size) if protocol.batching == "notebook" else None
    steps = len(fixed) if fixed is not None else math.ceil(n / protocol.batch_size)
    ctx = StepContext(max_steps=steps * protocol.epochs, max_epochs=protocol.epochs)
    train_curve, test_curve = [], []
    t0 = time.perf_counter()
    for epoch in range(protocol.epochs):
        model.train()
        method.train()
        ctx.epoch = epoch
        if fixed is not None:
            batches = [fixed[i] for i in torch.randperm(len(fixed), generator=g).tolist()]
        else:
            batches = list(torch.randperm(n, generator=g).split(protocol.batch_size))
        seen, scores, losses = [], [], []
        for idx in batches:
            x = train.x[idx]
            if protocol.shuffle_within_bags:
                x = shuffle_within_bags(x, train.mask[idx], g)
            batch = make_batch(x, train.mask[idx], train.y[idx], needs_coords)
            step = method.training_step(model, batch, ctx)
            opt.zero_grad(set_to_none=True)
            step.loss.backward()
            if protocol.grad_clamp is not None:
                for p in params:
                    if p.grad is not None:
                        p.grad.nan_to_num_(nan=0.0).clamp_(-protocol.grad_clamp, protocol.grad_clamp)
            opt.step()
            method.on_optimizer_step(model, ctx)
            ctx.global_step += 1
            seen.append(idx)
            scores.append(positive_score(step.output.logits.detach()))
            losses.append(float(step.loss.detach()))
        train_curve.append(_auc(train.y.numpy()[torch.cat(seen).numpy()], torch.cat(scores).numpy()))
        test_s, top_idx = predict(model, test, protocol.eval_batch_size, needs_coords)
        test_curve.append(_auc(test.y.numpy(), test_s))
    train_seconds = time.perf_counter() - t0
    if protocol.train_metrics == "last_epoch":
        train_y, train_s = train.y.numpy()[torch.cat(seen).numpy()], torch.cat(scores).numpy()
    else:
        train_y = train.y.numpy()[:n]
        train_s = predict(model, Standardized(train.x[:n], train.mask[:n], train.y[:n], train.roles[:n]),
                          protocol.eval_batch_size, needs_coords)[0]
    test_y = test.y.numpy()
    return {"train_auc": _auc(train_y, train_s), "test_auc": test_curve[-1],
            "train_acc": float(((train_s > 0) == train_y).mean()), "test_acc": float(((test_s > 0) == test_y).mean()),
            "train_loss": float(np.mean(losses)) if losses else float("nan"), "train_seconds": train_seconds,
            "train_auc_curve": train_curve, "test_auc_curve": test_curve,
            "top_roles": None if top_idx is None else _top_roles(test, top_idx)}


def _top_roles(test: Standardized, top_idx: np.ndarray) -> dict[str, dict[str, float]]:
    """Per test class, how often each role is the bag's top-scoring instance."""
    roles = test.roles.numpy()[np.arange(len(test)), top_idx]
    out = {}
    for label, name in ((1, "positive_bags"), (0, "negative_bags")):
        r = roles[test.y.numpy() == label]
        out[name] = {role.name.lower(): round(float((r == role).mean()), 4) for role in Role if (r == role).any()}
    return out
