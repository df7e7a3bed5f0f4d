"""Tune the baselines' strengths and HyperCL's options on a validation split.

Each setting trains once (seed 0) under the chosen preset on 90 % of every task's
training set and is scored on the held-out 10 %: the test set is never looked at.
Writes one JSON per setting and ``sweep.md`` into --out; the presets in
``hypercl/bench/presets.py`` take the best setting of each strategy.

    python benchmarks/sweep.py split-mnist --preset paper --out results/sweeps/split-mnist-paper
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path

from hypercl.bench.datasets import BENCHMARKS, build, resolve_data_root
from hypercl.bench.presets import Preset, preset
from hypercl.bench.results import atomic_write, load_run, write_json
from hypercl.bench.run import run_one, silence_avalanche_notices
from hypercl.bench.strategies import settings_of
from hypercl.hypernet import HyperNetConfig

GRID: dict[str, list[dict]] = {
    # Avalanche's EWC squares mini-batch gradients of a network that fits its task almost
    # perfectly after 2000 steps, so its Fisher is tiny and useful strengths are large.
    "ewc": [{"ewc_lambda": v} for v in (1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12)],
    # SI's importance is path length over squared distance; its scale is unknown a priori.
    "si": [{"si_lambda": v} for v in (0.1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5)],
    "lwf": [{"lwf_alpha": v} for v in (0.5, 1.0, 2.0, 4.0, 8.0)],
    "hypercl": [{"lookahead": a, "reset_optimizer": r} for a in (False, True) for r in (False, True)]
    # HyperCL loses accuracy on the last tasks, not by forgetting: try more plasticity.
    + [{"lookahead": True, "reset_optimizer": False, "beta": b} for b in (0.005, 0.002)]
    + [{"lookahead": True, "reset_optimizer": False, "init": "xavier"}]
    # The paper's init learns each task better but forgets more: hold it with a larger beta.
    + [{"lookahead": True, "reset_optimizer": False, "init": "xavier", "beta": b} for b in (0.02, 0.05)],
}


def with_overrides(base: Preset, overrides: dict) -> Preset:
    """``base`` with ``overrides`` applied; hypernetwork options go into its ``hnet``."""
    hnet_keys = {f.name for f in fields(HyperNetConfig)}
    hnet = replace(base.hnet, **{k: v for k, v in overrides.items() if k in hnet_keys})
    return replace(base, hnet=hnet, **{k: v for k, v in overrides.items() if k not in hnet_keys})


def differences(name: str, record: dict, current: Preset) -> str:
    """The settings ``name`` uses that ``record`` ran with and ``current`` no longer has."""
    now = settings_of(name, current.to_dict())
    then = settings_of(name, record["config"]["preset_settings"])
    diffs = []
    for key, value in now.items():
        old = then.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            diffs += [f"{key}.{k}={old.get(k)}" for k in value if old.get(k) != value[k]]
        elif old != value:
            diffs.append(f"{key}={old}")
    return ", ".join(diffs)


def main() -> int:
    silence_avalanche_notices()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("benchmark", choices=sorted(BENCHMARKS))
    p.add_argument("--preset", default="paper")
    p.add_argument("--strategies", default=",".join(GRID))
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    command = shlex.join(["python", "benchmarks/sweep.py", *sys.argv[1:]])
    wanted = args.strategies.split(",")
    unknown = sorted(set(wanted) - set(GRID))
    if unknown:
        p.error(f"no grid for {', '.join(unknown)}; choose from {', '.join(GRID)}")
    try:
        info, base = BENCHMARKS[args.benchmark], preset(args.benchmark, args.preset)
        root = resolve_data_root(args.data_root)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    bm = None  # built on the first setting that has to run
    rows = []  # every finished setting in --out, so sweep.md keeps earlier invocations' rows
    for name in GRID:
        for overrides in GRID[name]:
            tag = ",".join(f"{k}={v}" for k, v in overrides.items())
            path = args.out / "runs" / f"{name}[{tag}].json"
            record = load_run(path)
            if record is None and name not in wanted:
                continue
            if record is None:
                print(f"{name} {tag}", file=sys.stderr, flush=True)
                bm = bm or build(args.benchmark, root, seed=0, validation=0.1)
                record = run_one(bm, info, args.preset, with_overrides(base, overrides), name, 0, device=args.device, command=command)
                record["overrides"] = overrides
                record["evaluated_on"] = "validation: 10 % of each task's training set"
                write_json(path, record)
            rows.append((name, tag, record))

    lines = [
        f"# Sweep on {args.benchmark}, preset `{args.preset}`, seed 0, validation split",
        "",
        "Scored on 10 % of each task's training set held out (never the test set).",
        "The rows come from these commands (each run's JSON records its own):",
        "",
        *(f"- `{c}`" for c in dict.fromkeys(r[2]["command"] for r in rows)),
        "",
        "The last column names the settings a run used where today's preset differs.",
        "",
        "| strategy | setting | final avg acc (%) | BWT (points) | best | ran with |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == name]
        best = max(mine, key=lambda r: r[2]["final_avg_acc"])
        for _, tag, rec in mine:
            mark = "**best**" if rec is best[2] else ""
            ran_with = differences(name, rec, with_overrides(base, rec["overrides"]))
            lines.append(
                f"| {name} | {tag} | {100 * rec['final_avg_acc']:.2f} | {100 * rec['bwt']:+.2f} | {mark} | {ran_with} |"
            )
    atomic_write(args.out / "sweep.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
