"""Compare named variants of a preset on the validation split (see ``hypercl.bench.variants``).

    python benchmarks/variants.py split-cifar100 --preset cpu --tasks 3 --workers 2 \
        --variant 'base:' --variant 'prev: emb_init=previous' --variant 'naive: strategy=naive' \
        --out results/sweeps/split-cifar100-cpu/variants
"""

import sys

from hypercl.bench.variants import main

if __name__ == "__main__":
    sys.exit(main())
