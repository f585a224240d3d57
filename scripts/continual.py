"""Continual MIL (CoMEL and baselines): ``python scripts/continual.py method=comel`` (see docs/comel.md)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from milkit.continual import run_continual
from milkit.errors import MILKitError


@hydra.main(version_base="1.3", config_path="../conf", config_name="continual")
def main(cfg: DictConfig) -> None:
    try:
        run_continual(cfg)
    except MILKitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
