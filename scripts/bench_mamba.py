"""Selective scan and MambaMIL benchmarks (see milkit/utils/mamba_bench.py). ``python scripts/bench_mamba.py --help``"""
from milkit.utils.mamba_bench import main

if __name__ == "__main__":
    main()
