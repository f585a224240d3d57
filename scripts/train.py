"""Train a MIL model with cross-validation: ``python scripts/train.py [overrides]`` (see milkit/conf/train.yaml)."""
import hydra
from omegaconf import DictConfig

from milkit.cli import CONF_DIR, run_safely
from milkit.training.train import train


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = run_safely(train, cfg)
    return summary.get("objective")


if __name__ == "__main__":
    main()
