"""Algorithmic unit tests of MIL assumptions (Raff & Holt, NeurIPS 2023) for registered milkit models.

    python scripts/aut.py                                   # full default suite, report in outputs/aut/<time>/
    python scripts/aut.py models=[abmil,threshold_mil] seeds=1 epochs=5
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from milkit.errors import MILKitError


@hydra.main(version_base="1.3", config_path="../conf", config_name="aut")
def main(cfg: DictConfig) -> None:
    from milkit.aut.runner import run_suite

    try:
        run_suite(cfg)
    except MILKitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
