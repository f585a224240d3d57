"""Slide inference and heatmaps with a trained checkpoint (see milkit/conf/infer.yaml and docs/inference.md).

    python scripts/infer_slide.py slide=<file|folder|CSV> checkpoint=<file> output=<folder>
    python scripts/infer_slide.py slide=slides/ checkpoint=best.ckpt output=out heatmap.alpha=0.7 heatmap.cmap=viridis
"""
import hydra
from omegaconf import DictConfig

from milkit.cli import CONF_DIR, run_safely


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="infer")
def main(cfg: DictConfig) -> None:
    from milkit.inference import infer

    run_safely(infer, cfg)


if __name__ == "__main__":
    main()
