"""Preprocess whole-slide images: tissue segmentation → tiles → patch features (HDF5).

    python scripts/preprocess.py input=<folder or CSV> output=<folder> [encoder=uni encoder.weights=<file>]
    python scripts/preprocess.py -m input=... output=... shard=0,1,2,3 num_shards=4   # split a cohort
"""
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    from milkit.errors import MILKitError
    from milkit.preprocess import preprocess

    try:
        preprocess(cfg)
    except MILKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
