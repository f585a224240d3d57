"""Preprocess whole-slide images: ``python scripts/preprocess.py input=<folder|CSV> output=<folder> [encoder=...]``."""
import hydra
from omegaconf import DictConfig

from milkit.cli import CONF_DIR, run_safely
from milkit.preprocess import preprocess


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="preprocess")
def main(cfg: DictConfig) -> None:
    run_safely(preprocess, cfg)


if __name__ == "__main__":
    main()
