"""Adapter-based continual methods: plain sequential LoRA and CoMEL (OWLoRA + BPPL).

Both train the whole model on the first task. From the second task on, every adapted linear layer (each
``nn.Linear`` with more than one output outside the heads; see ``milkit.models.layers.lora``) gets one new
low-rank adapter per task, and only the newest adapters and the newest head train: the base weights, earlier
adapters, LayerNorms, the pooling's last layer and earlier heads are frozen. All adapters stay active at test time.

CoMEL's OWLoRA adds, on top of that:
* after the first task, each adapted weight is replaced by its SVD truncation keeping ``energy`` of its squared
  Frobenius norm, and its singular bases become the first task's protected subspaces;
* an orthogonality penalty ``λ Σ_layers (‖DDᵀ − I‖² + ‖UᵀU − I‖²)/r²`` on the newest adapters;
* before every optimiser step, the newest adapters' gradients are projected away from the input and output
  subspaces of the first task's bases and of all earlier adapters.
Defaults follow the official code: rank 16, 48 for the fused qkv projection (the script's ``--rank`` is never
read upstream), energy 0.99, λ = 1, and BPPL on. Upstream bugs not copied are listed in
``milkit.models.layers.lora``. The projection acts on gradients (as in the paper's code); Adam's per-coordinate
scaling and weight decay can still move an update slightly out of the allowed subspace.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from milkit.continual.methods.base import ContinualMethod
from milkit.models.base import MILModel
from milkit.models.layers.lora import AdaptedLinear, adapted_layers, inject_adapters, rank_for
from milkit.types import BagBatch

__all__ = ["SequentialLoRA", "CoMEL"]

_DEFAULT_BPPL: dict[str, Any] = {"weight": 1.0, "tau1": 0.95, "tau": 0.5, "temperature": 1.0}


class SequentialLoRA(ContinualMethod):
    """Plain LoRA (``method=lora``): full training on task 1, then one new adapter per layer per task.

    Args:
        rank: adapter rank.
        rank_overrides: ``{glob on the layer name: rank}``, first match wins (e.g. ``{"*qkv": 48}``).
        exclude: module-name prefixes never adapted (the heads always are excluded).
        bppl: ``BPPL`` keyword arguments, or None.
    """

    def __init__(self, rank: int = 16, rank_overrides: Mapping[str, int] | None = None,
                 exclude: Sequence[str] = (), bppl: dict[str, Any] | None = None) -> None:
        super().__init__(bppl)
        self.rank = int(rank)
        self.rank_overrides = dict(rank_overrides or {})
        self.exclude = ("head", *exclude)

    def begin_task(self, model: MILModel, task: int, num_classes: int) -> None:
        inject_adapters(model, self.exclude)
        if task > 0:
            for name, layer in adapted_layers(model):
                self._add_adapter(name, layer)
        super().begin_task(model, task, num_classes)

    def _add_adapter(self, name: str, layer: AdaptedLinear) -> None:
        layer.add_adapter(rank_for(name, self.rank, self.rank_overrides))

    def configure_trainable(self, model: MILModel) -> None:
        if self.task == 0:
            return
        model.requires_grad_(False)
        for _, layer in adapted_layers(model):
            layer.newest.requires_grad_(True)
        model.head.heads[-1].requires_grad_(True)


class CoMEL(SequentialLoRA):
    """CoMEL (``method=comel``): OWLoRA adapters and BPPL instance pseudo-labels.

    Args:
        energy: fraction of each weight's squared singular values kept by the SVD truncation after task 1.
        ortho_weight: weight λ of the orthogonality penalty.
        project: project the newest adapters' gradients away from earlier subspaces.
        protect_base: include the first task's SVD bases in those subspaces (the method's intent). Upstream's
            basis is random (see ``milkit.models.layers.lora``), which in effect protects later adapters only;
            ``False`` reproduces that.
        rank, rank_overrides, exclude: as in ``SequentialLoRA``.
        bppl: ``BPPL`` keyword arguments (None disables it).
    """

    def __init__(self, energy: float = 0.99, ortho_weight: float = 1.0, project: bool = True,
                 protect_base: bool = True, rank: int = 16, rank_overrides: Mapping[str, int] | None = None,
                 exclude: Sequence[str] = (), bppl: dict[str, Any] | None = _DEFAULT_BPPL) -> None:
        super().__init__(rank, {"*qkv": 48} if rank_overrides is None else rank_overrides, exclude, bppl)
        self.energy, self.ortho_weight, self.project = float(energy), float(ortho_weight), bool(project)
        self.protect_base = bool(protect_base)

    def _add_adapter(self, name: str, layer: AdaptedLinear) -> None:
        layer.add_adapter(rank_for(name, self.rank, self.rank_overrides), protect_basis=self.protect_base)

    def end_task(self, model: MILModel, task: int, loader: Iterable[BagBatch], device: torch.device) -> dict[str, Any]:
        if task != 0:
            return {}
        kept = {name: layer.compress(self.energy) for name, layer in adapted_layers(model)}
        return {"svd_rank": kept}

    def regularizers(self, model: MILModel, batch: BagBatch, out) -> dict[str, Tensor]:
        if self.task <= 0 or self.ortho_weight == 0:
            return {}
        penalty = sum(layer.orthogonality_penalty() for _, layer in adapted_layers(model))
        return {"ortho": self.ortho_weight * penalty}

    def before_optimizer_step(self, model: MILModel) -> None:
        if self.task > 0 and self.project:
            for _, layer in adapted_layers(model):
                layer.project_gradients()
