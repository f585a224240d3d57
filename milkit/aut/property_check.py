"""Model-agnostic monotonicity check for the standard MIL assumption.

Under the standard assumption no instance is evidence for the negative class, so for every bag ``X`` and
instance ``x`` the positive score must satisfy ``f(X ∪ {x}) ≥ f(X)``. For random (bag, extra instance) pairs
this measures how often adding the instance *lowers* the score. A max of instance scores (mi-Net with one
logit) gives exactly 0; mean or attention pooling gives a positive fraction.

Both versions of a bag go through the model in the same padded batch (the bag padded by one slot, and the
bag with ``x`` in that slot), so they share every computation but the added instance. A drop counts when it
exceeds ``atol + rtol·|f(X)|``, which only absorbs float rounding.
Extra instances are drawn role-stratified (a role uniformly, then an instance of it), so rare roles such as
the poison are measured as often as background.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from milkit.aut.bags import Role
from milkit.aut.trainer import Standardized, grid_coords, positive_score
from milkit.models.base import MILModel

__all__ = ["monotonicity_check"]


@torch.no_grad()
def monotonicity_check(model: MILModel, bags: Standardized, pool: Standardized, n_pairs: int = 1000, seed: int = 0,
                       atol: float = 1e-5, rtol: float = 1e-5, batch_size: int = 128,
                       needs_coords: bool = False) -> dict[str, Any]:
    """Fraction of (bag from ``bags``, instance from ``pool``) pairs where adding the instance lowers the
    positive score; also per role of the added instance, and the largest drop."""
    model.eval()
    rng = np.random.default_rng(seed)
    pool_x, pool_roles = pool.x[pool.mask], pool.roles[pool.mask].numpy()
    present = np.unique(pool_roles)
    role = present[rng.integers(0, present.size, size=n_pairs)]
    inst = np.empty(n_pairs, dtype=np.int64)
    for r in present:
        sel = role == r
        inst[sel] = rng.choice(np.flatnonzero(pool_roles == r), size=int(sel.sum()))
    bag = rng.integers(0, len(bags), size=n_pairs)

    drops = []
    for i in range(0, n_pairs, batch_size):
        b, k = torch.from_numpy(bag[i:i + batch_size]), torch.from_numpy(inst[i:i + batch_size])
        lengths = bags.mask[b].sum(1)
        n = int(lengths.max()) + 1
        x = torch.zeros(len(b), n, bags.x.shape[-1])
        x[:, :n - 1] = bags.x[b, :n - 1]
        mask = torch.zeros(len(b), n, dtype=torch.bool)
        mask[:, :n - 1] = bags.mask[b, :n - 1]
        rows = torch.arange(len(b))
        x_add, mask_add = x.clone(), mask.clone()
        x_add[rows, lengths] = pool_x[k]
        mask_add[rows, lengths] = True
        coords = grid_coords(n).expand(2 * len(b), -1, -1) if needs_coords else None
        s = positive_score(model(torch.cat([x, x_add]), torch.cat([mask, mask_add]), coords).logits)
        base, added = s[:len(b)], s[len(b):]
        drops.append(torch.stack([base - added, atol + rtol * base.abs()]).numpy())
    drop, tol = np.concatenate(drops, axis=1)
    lowered = drop > tol
    by_role = {Role(int(r)).name.lower(): round(float(lowered[role == r].mean()), 4) for r in present}
    return {"n_pairs": n_pairs, "lowered_fraction": float(lowered.mean()), "lowered_by_role": by_role,
            "max_drop": float(max(0.0, drop.max()))}
