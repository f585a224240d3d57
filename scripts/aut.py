"""Algorithmic unit tests of MIL assumptions (Raff & Holt, NeurIPS 2023) for registered milkit models.

    python scripts/aut.py                                   # full default suite, report in outputs/aut/<time>/
    python scripts/aut.py models=[abmil,threshold_mil] seeds=1 epochs=5
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from milkit.aut.runner import run_suite
from milkit.cli import CONF_DIR, run_safely


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="aut")
def main(cfg: DictConfig) -> None:
    run_safely(run_suite, cfg)


if __name__ == "__main__":
    main()
