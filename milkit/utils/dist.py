"""Which process of a distributed run this is, before any process group exists (torchrun, SLURM, Lightning).

Multi-process runs (``trainer=ddp`` under ``torchrun`` or ``srun``, or Lightning's own launcher) start
``train`` once per process; only the global rank zero writes run-level files (splits, results.json, Hydra's
``.hydra`` folder through the ``milkit_rank_zero`` resolver in ``conf/hydra/default.yaml``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from omegaconf import OmegaConf

__all__ = ["is_global_zero", "register_resolvers"]


def is_global_zero(env: Mapping[str, str] = os.environ) -> bool:
    """False in every process but the first of a distributed launch: ``RANK`` (torchrun), ``SLURM_PROCID`` in a
    multi-task SLURM step, Lightning's ``NODE_RANK`` / ``LOCAL_RANK`` for the processes it starts."""
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("NODE_RANK", "0")) == 0 and int(env.get("LOCAL_RANK", "0")) == 0


def _on_rank_zero(value: Any) -> Any:
    return value if is_global_zero() else None


def register_resolvers() -> None:
    """``${milkit_rank_zero:x}``: ``x`` on the global rank zero, null elsewhere (e.g. ``hydra.output_subdir``)."""
    if not OmegaConf.has_resolver("milkit_rank_zero"):
        OmegaConf.register_new_resolver("milkit_rank_zero", _on_rank_zero)


register_resolvers()
