"""Tune the strategies' options on a validation split: Ray Tune, Optuna's sampler, ASHA.

Every trial trains one setting (seed 0) on 90 % of every task's training set and is
scored on the held-out 10 %: the test set is never looked at. Writes one JSON per trial
and ``sweep.md`` into --out; run the same command again to resume an interrupted sweep.
The presets in ``hypercl/bench/presets.py`` take the best setting of each strategy.

    python benchmarks/sweep.py split-mnist --preset paper --strategies ewc,si --trials 12 \
        --out results/sweeps/split-mnist-paper

See ``hypercl.bench.sweep`` (search spaces, early stopping) and ``--help``.
"""

import sys

from hypercl.bench.sweep import main

if __name__ == "__main__":
    sys.exit(main())
