"""Synthetic continual-learning benchmark (see milkit/continual/bench.py). ``python scripts/bench_continual.py --help``"""
from milkit.continual.bench import main

if __name__ == "__main__":
    main()
