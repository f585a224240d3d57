"""Forward+backward time and peak memory of registered MIL models on one bag, with torchmil as the peer.

    python scripts/bench_models.py [--models abmil transmil rrt_abmil ...] [--sizes 1000 10000 50000] \
        [--device cuda] [--dtype bfloat16] [--threads 1] [--out results.json]

See ``milkit/utils/model_bench.py`` for what is measured.
"""
import sys

from milkit.errors import MILKitError
from milkit.utils.model_bench import main

if __name__ == "__main__":
    try:
        main()
    except MILKitError as err:
        sys.exit(f"milkit: error: {err}")
