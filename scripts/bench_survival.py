"""Survival benchmark (see milkit/tasks/bench.py and docs/survival.md):

    python scripts/bench_survival.py cindex [--runs abmil/nll ...] [--seeds 0 1 2] [--folds 5] [--epochs 20]
    python scripts/bench_survival.py step [--n 2000] [--in-dim 1024]
"""
import sys

from milkit.errors import MILKitError
from milkit.tasks.bench import main

if __name__ == "__main__":
    try:
        main()
    except MILKitError as err:
        sys.exit(f"milkit: error: {err}")
