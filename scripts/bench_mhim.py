"""MHIM-MIL measurements (see milkit/training/bench_mhim.py and docs/mhim.md):

    python scripts/bench_mhim.py speed --models abmil transmil dsmil --sizes 1000 10000 50000 [--device cuda]
    python scripts/bench_mhim.py auc --model abmil --data ucsb_breast_cancer --seeds 0 1 2 trainer.max_epochs=100
"""
import sys

from milkit.errors import MILKitError
from milkit.training.bench_mhim import main

if __name__ == "__main__":
    try:
        main()
    except MILKitError as err:
        sys.exit(f"milkit: error: {err}")
