"""Slide-inference benchmarks (see milkit/inference/bench.py). ``python scripts/bench_infer.py --help``"""
from milkit.inference.bench import main

if __name__ == "__main__":
    main()
