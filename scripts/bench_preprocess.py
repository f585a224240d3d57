"""WSI preprocessing benchmarks (see milkit/preprocess/bench.py). ``python scripts/bench_preprocess.py --help``"""
from milkit.preprocess.bench import main

if __name__ == "__main__":
    main()
