"""Momentum-teacher helpers: initialisation from a baseline checkpoint and the EMA update."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from milkit.errors import ConfigError
from milkit.training.checkpoint import strip_prefix

__all__ = ["load_student_state", "ema_update_", "copy_prefix_"]


def load_student_state(path: str | os.PathLike, key: str = "method.teacher_init") -> dict[str, Tensor]:
    """The student weights stored in a checkpoint, without their prefix.

    Accepts a milkit/Lightning checkpoint (``state_dict`` with the student under ``model.``) or a plain model
    ``state_dict``. ``key`` names the config entry in error messages.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: checkpoint {path} does not exist (train the baseline first; the mhim experiments "
                          "take baseline_dir=<its output dir>, see docs/mhim.md)")
    try:
        # a trusted local training checkpoint; Lightning checkpoints hold non-tensor objects (hyper-parameters)
        ckpt: Any = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same user error)
        raise ConfigError(f"{key}: cannot read checkpoint {path}: {err}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {path} holds no state_dict of tensors")
    return strip_prefix(state) if any(k.startswith("model.") for k in state) else state


def copy_prefix_(module: nn.Module, state: dict[str, Tensor], prefix: str = "", source: str = "checkpoint") -> None:
    """Load the entries of ``state`` whose names start with ``prefix`` into ``module`` (all of them must fit).

    ``prefix=""`` loads the whole state strictly. Raises ``ConfigError`` naming ``source`` on any mismatch,
    so that a baseline trained with another architecture is never loaded silently (MHIM-MIL's upstream code
    swallows such errors).
    """
    own = module.state_dict()
    wanted = {k: v for k, v in state.items() if k.startswith(prefix)}
    expected = {k for k in own if k.startswith(prefix)}
    missing, unexpected = sorted(expected - set(wanted)), sorted(set(wanted) - expected)
    if missing or unexpected or not wanted:
        detail = f"missing {missing[:4]}" if missing else f"unexpected {unexpected[:4]}" if unexpected else "no keys"
        raise ConfigError(f"{source}: weights under '{prefix or '<all>'}' do not match the model ({detail})")
    bad = [k for k, v in wanted.items() if v.shape != own[k].shape]
    if bad:
        raise ConfigError(f"{source}: shape mismatch for {bad[0]}: {tuple(wanted[bad[0]].shape)} in the checkpoint, "
                          f"{tuple(own[bad[0]].shape)} in the model")
    module.load_state_dict({**own, **wanted})


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m·θ_t + (1-m)·θ_s`` over parameters (not buffers, as MHIM-MIL)."""
    if momentum >= 1.0:
        return
    t_params, s_params = list(teacher.parameters()), [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ConfigError("the teacher and the student have different parameters; they must share an architecture")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
