"""Small bags, models and loops shared by the MHIM tests."""
from __future__ import annotations

import torch

from milkit.models import create_model, model_info
from milkit.training.methods.base import StepContext, TrainingMethod
from milkit.types import BagBatch

IN_DIM = 8


def tiny(name: str = "abmil", num_classes: int = 2, **kw):
    return create_model(name, in_dim=IN_DIM, num_classes=num_classes, **{**model_info(name)["tiny_kwargs"], **kw})


def set_up(method: TrainingMethod, model=None):
    """``method.setup(model)`` on a tiny ABMIL (or ``model``); returns ``(model, method)``."""
    model = model if model is not None else tiny()
    method.setup(model)
    return model, method


def padded_batch(lengths: list[int], d: int = IN_DIM, seed: int = 0, labels: list[int] | None = None) -> BagBatch:
    """Random bags right-padded to the longest; padded rows hold large values that must never matter."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    x = torch.randn(len(lengths), n, d, generator=g)
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    x[~mask] = 1e3
    coords = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], -1).float().expand(len(lengths), n, 2)
    y = torch.tensor(labels if labels is not None else [i % 2 for i in range(len(lengths))])
    return BagBatch(x=x, mask=mask, y=y, coords=coords.clone(), ids=[f"b{i}" for i in range(len(lengths))])


def synthetic_bags(n_bags: int, seed: int, d: int = IN_DIM) -> list[BagBatch]:
    """Positive bags hold 3-5 'key' instances shifted along the first feature; negatives hold none."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n_bags):
        n = int(torch.randint(12, 30, (1,), generator=g))
        x = torch.randn(1, n, d, generator=g)
        y = i % 2
        if y:
            k = int(torch.randint(3, 6, (1,), generator=g))
            x[0, torch.randperm(n, generator=g)[:k], 0] += 4.0
        bags.append(BagBatch(x=x, mask=torch.ones(1, n, dtype=torch.bool), y=torch.tensor([y])))
    return bags


def fit(model, method: TrainingMethod, bags: list[BagBatch], epochs: int, lr: float = 5e-3) -> None:
    """The LightningModule's contract in a plain loop: setup, step, optimiser step, on_optimizer_step."""
    method.setup(model)
    params = [p for p in [*model.parameters(), *method.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    ctx = StepContext(max_steps=epochs * len(bags), max_epochs=epochs)
    model.train()
    method.train()
    for epoch in range(epochs):
        ctx.epoch = epoch
        for bag in bags:
            loss = method.training_step(model, bag, ctx).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            method.on_optimizer_step(model, ctx)
            ctx.global_step += 1


@torch.no_grad()
def auc(model, method: TrainingMethod, bags: list[BagBatch]) -> float:
    from sklearn.metrics import roc_auc_score

    model.eval()
    scores = [method.eval_forward(model, b).logits.softmax(-1)[0, 1].item() for b in bags]
    return float(roc_auc_score([int(b.y) for b in bags], scores))
