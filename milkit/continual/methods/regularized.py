"""Regularisation baselines: Learning without Forgetting and online EWC (settings of the CoMEL code).

* **LwF** (Li & Hoiem, 2016): after each task a frozen copy of the model is kept; on later tasks the current
  model's logits over the old classes are distilled towards the copy's on the new task's bags:
  ``α · mean_b −Σ_c softmax(z_old/T)_c log softmax(z/T)_c`` with α = 1, T = 2 (no T² factor, as upstream).
* **Online EWC** (Schwarz et al., 2018): after each task a diagonal Fisher ``F_t = E_bags[p(y|x) · g²]`` of the
  backbone (heads excluded) is computed on that task's training bags, one bag at a time, with g the gradient of
  log p(y|x); ``F ← γ F + F_t`` and the anchor θ* ← θ. Penalty ``λ Σ F (θ − θ*)²`` with λ = 1, γ = 0.9.

Upstream bug not copied: the CoMEL EWC trainer weights each squared gradient by ``exp(cross-entropy)`` = 1/p(y|x)
instead of ``exp(log-likelihood)`` = p(y|x) (mammoth's reference implementation), which inflates the Fisher on
misclassified bags.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from milkit.continual.methods.base import ContinualMethod
from milkit.models.base import MILModel
from milkit.types import BagBatch

__all__ = ["LwF", "EWC"]


class LwF(ContinualMethod):
    """Learning without Forgetting (``method=lwf``).

    Args:
        alpha: distillation weight.
        temperature: distillation temperature T.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0, bppl: dict[str, Any] | None = None) -> None:
        super().__init__(bppl)
        self.alpha, self.temperature = alpha, temperature
        self.teacher: MILModel | None = None

    def end_task(self, model: MILModel, task: int, loader: Iterable[BagBatch], device: torch.device) -> dict[str, Any]:
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        return {}

    def train(self, mode: bool = True) -> "LwF":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the snapshot always predicts without dropout
        return self

    def regularizers(self, model: MILModel, batch: BagBatch, out) -> dict[str, Tensor]:
        if self.teacher is None:
            return {}
        with torch.no_grad():
            old = self.teacher(batch.x, batch.mask, batch.coords).logits
        n_old, t = old.shape[-1], self.temperature
        target = torch.softmax(old / t, dim=-1)
        kd = -(target * F.log_softmax(out.logits[:, :n_old] / t, dim=-1)).sum(-1).mean()
        return {"lwf": self.alpha * kd}


def _buffer_name(param_name: str, kind: str) -> str:
    return f"{kind}__{param_name.replace('.', '__')}"


class EWC(ContinualMethod):
    """Online elastic weight consolidation (``method=ewc``).

    Args:
        lam: penalty weight λ (``e_lambda``).
        gamma: decay of the running Fisher (``e_gamma``).
    """

    def __init__(self, lam: float = 1.0, gamma: float = 0.9, bppl: dict[str, Any] | None = None) -> None:
        super().__init__(bppl)
        self.lam, self.gamma = lam, gamma
        self._names: list[str] = []

    @staticmethod
    def _backbone(model: MILModel) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if not n.startswith("head.")]

    def fisher(self, name: str) -> Tensor:
        return getattr(self, _buffer_name(name, "fisher"))

    def anchor(self, name: str) -> Tensor:
        return getattr(self, _buffer_name(name, "anchor"))

    def end_task(self, model: MILModel, task: int, loader: Iterable[BagBatch], device: torch.device) -> dict[str, Any]:
        params = self._backbone(model)
        model.to(device)
        was_training = model.training
        model.eval()
        fisher = {n: torch.zeros_like(p) for n, p in params}
        n_bags = 0
        for batch in loader:
            batch = batch.to(device)
            for i in range(len(batch)):
                n = int(batch.mask[i].sum())
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    logp = F.log_softmax(model(batch.x[i:i + 1, :n]).logits, dim=-1)[0, batch.y[i]]
                    torch.autograd.backward(logp, inputs=[p for _, p in params if p.requires_grad])
                weight = logp.detach().exp()
                for name, p in params:
                    if p.grad is not None:
                        fisher[name] += weight * p.grad.detach() ** 2
                n_bags += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for name, p in params:
            f = fisher[name] / max(n_bags, 1)
            if name in self._names:
                f = self.gamma * self.fisher(name).to(f.device) + f
            self.register_buffer(_buffer_name(name, "fisher"), f)
            self.register_buffer(_buffer_name(name, "anchor"), p.detach().clone())
        self._names = [n for n, _ in params]
        return {"fisher_mean": float(torch.cat([self.fisher(n).flatten() for n in self._names]).mean())}

    def regularizers(self, model: MILModel, batch: BagBatch, out) -> dict[str, Tensor]:
        if not self._names:
            return {}
        penalty = out.logits.new_zeros(())
        for name, p in self._backbone(model):
            if name in self._names:
                penalty = penalty + (self.fisher(name) * (p - self.anchor(name)) ** 2).sum()
        return {"ewc": self.lam * penalty}
