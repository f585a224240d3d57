"""Continual MIL (CoMEL and baselines): ``python scripts/continual.py method=comel`` (see docs/comel.md)."""
import hydra
from omegaconf import DictConfig

from milkit.cli import CONF_DIR, run_safely
from milkit.continual import run_continual


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="continual")
def main(cfg: DictConfig) -> None:
    run_safely(run_continual, cfg)


if __name__ == "__main__":
    main()
