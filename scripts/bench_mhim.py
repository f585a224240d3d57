"""MHIM-MIL measurements (see milkit/training/bench_mhim.py and docs/mhim.md):

    python scripts/bench_mhim.py speed --models abmil transmil dsmil
    python scripts/bench_mhim.py auc --model abmil --data ucsb_breast_cancer --seeds 0 1 2 trainer.max_epochs=100
"""
from milkit.training.bench_mhim import main

if __name__ == "__main__":
    main()
