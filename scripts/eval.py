"""Evaluate a trained checkpoint: ``python scripts/eval.py ckpt_path=<file> [data=...] [splits_csv=... fold=0]``."""
import hydra
from omegaconf import DictConfig

from milkit.cli import CONF_DIR, run_safely
from milkit.training.evaluate import evaluate


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    run_safely(evaluate, cfg)


if __name__ == "__main__":
    main()
