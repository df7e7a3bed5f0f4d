"""Compare named variants of a preset on the validation split, side by side.

Where a sweep searches a declared range, this answers a question: *which of these changes
makes HyperCL learn a task faster, and what does each cost in forgetting?* Every variant is
the preset with some options changed (``lr=1e-3 emb_init=previous hidden=[50,50]``; a
hypernetwork option such as ``init`` or ``chunk_size`` goes into its ``hnet``) and may name
another strategy (``strategy=naive``) as a reference. All of them train on 90 % of each task's
training set and are scored on the held-out 10 % (the test set is never built), for the
first ``--tasks`` tasks and ``--seeds`` seeds, as runs of the grid (``--workers``).

Each finished run is written to ``<out>/runs/<variant>-seed<N>.json`` as it lands and
``<out>/variants.md`` is rewritten: per variant, the accuracy on each task right after
training it (how fast it learns), the average over the tasks at the end, BWT and the step
time. A run already there with the same settings is not trained again, so a table grows
over several commands; one with other settings is refused (another ``--out``, or
``--force``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hypercl.bench.datasets import BENCHMARKS, info_of, resolve_data_root
from hypercl.bench.grid import GridError, Resources, count_below_one, log_name, run_grid, sigterm_as_interrupt
from hypercl.bench.presets import Preset, preset
from hypercl.bench.results import atomic_write, load_run, write_json
from hypercl.bench.run import Job, execute
from hypercl.bench.strategies import STRATEGIES, settings_of
from hypercl.bench.sweep import EVALUATED_ON, VALIDATION, with_overrides


@dataclass(frozen=True)
class Variant:
    name: str
    strategy: str
    overrides: dict


def parse_variant(text: str, default_strategy: str) -> Variant:
    """``"name: key=value key=value"``; values are JSON where they parse (``1e-3``, ``[50, 50]``,
    ``true``), lists of names without quotes (``[conv*,head.*]``), else strings (``previous``);
    ``strategy=`` picks another strategy."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in "/\\ "):
        raise ValueError(
            f"--variant {text!r}: expected 'NAME: key=value ...', e.g. 'fast: lr=1e-3 emb_init=previous' "
            "(NAME without spaces or slashes; no key=value for the preset as it is)."
        )
    overrides = {}
    for item in shlex.split(rest):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {name}: {item!r} is not key=value.")
        overrides[key] = _value(raw)
    strategy = overrides.pop("strategy", default_strategy)
    if strategy not in STRATEGIES:
        raise ValueError(f"--variant {name}: unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}.")
    return Variant(name, strategy, overrides)


def _value(raw: str):
    """JSON where it parses; ``[a,b]`` without JSON's quotes is a tuple of such values (the
    shell takes the quotes of ``generate=['conv*','head.*']``); else the string itself."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        if not (raw.startswith("[") and raw.endswith("]")):
            return raw
        value = [_value(item.strip()) for item in raw[1:-1].split(",") if item.strip()]
    return tuple(value) if isinstance(value, list) else value


def settings(base: Preset, v: Variant) -> Preset:
    """The preset ``v`` trains under; an option the preset does not have is one clear error."""
    try:
        return with_overrides(base, v.overrides)
    except TypeError as err:
        raise ValueError(f"--variant {v.name}: {err}; the options are Preset's and HyperNetConfig's fields.") from None
    except ValueError as err:
        raise ValueError(f"--variant {v.name}: {err}") from None


def row(name: str, records: list[dict]) -> str:
    """One line of the table: means over the seeds in ``records``."""
    r0 = records[0]
    n = len(r0["acc"])
    just = np.mean([[r["acc"][t][t] for t in range(n)] for r in records], axis=0) * 100
    final = np.mean([r["final_avg_acc"] for r in records]) * 100
    bwt = np.mean([r["bwt"] for r in records]) * 100 if n > 1 else float("nan")
    ms = np.mean([r["time_per_step_ms"] for r in records])
    changed = " ".join(f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in r0["overrides"].items())
    return (
        f"| {name} | {r0['strategy']} | {changed or '(preset)'} | {len(records)} | "
        f"{' '.join(f'{a:.1f}' for a in just)} | {just.mean():.2f} | {final:.2f} | {bwt:+.2f} | {ms:.0f} |"
    )


def table(out: Path, order: list[str]) -> str:
    """``variants.md``: every variant recorded in ``out``, those of ``order`` first, in that order."""
    runs: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        rec = load_run(path)
        if rec is not None:
            runs.setdefault(rec["variant"], []).append(rec)
    names = [n for n in order if n in runs] + sorted(set(runs) - set(order))
    if not names:
        return ""
    first = runs[names[0]][0]
    commands = sorted({r["variants_command"] for rs in runs.values() for r in rs})
    lines = [
        f"# {first['benchmark']}: variants of preset `{first['preset']}`, first {len(first['acc'])} tasks",
        "",
        f"Scored on the {EVALUATED_ON} (the test set is never read); means over the seeds. "
        "*Just trained*: accuracy on each task right after training it; *mean*: their mean, how "
        "well the variant learns a task; *final*: average over the tasks after the last one.",
        "",
        "| variant | strategy | changed | seeds | just trained, per task (%) | mean | final (%) | BWT (points) | ms / step |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(n, runs[n]) for n in names),
        "",
        "Commands:",
        "",
        *(f"    {c}" for c in commands),
        "",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/variants.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python benchmarks/variants.py split-cifar100 --preset cpu --tasks 3 "
        "--variant 'base:' --variant 'prev: emb_init=previous' --variant 'naive: strategy=naive' --workers 2",
    )
    p.add_argument("benchmark", choices=sorted(BENCHMARKS))
    p.add_argument("--preset", default=None, help="default: cpu for CIFAR, quick for MNIST")
    p.add_argument("--strategy", default="hypercl", help="the variants' strategy unless one names its own")
    p.add_argument("--variant", action="append", required=True, metavar="'NAME: key=value ...'")
    p.add_argument("--tasks", type=int, default=None, help="train only the first N tasks")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="steps per task instead of the preset's")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="re-run variants already recorded with other settings")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-run", type=float, default=None, help="CPUs each run holds on Ray (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each run")
    p.add_argument(
        "--checkpoint-every", type=int, default=None, metavar="STEPS",
        help="also save each run's state every STEPS steps, not only after each task; a stopped "
        "command run again resumes its runs from there",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if bad := count_below_one(args, ("tasks", "seeds", "steps", "workers", "threads", "checkpoint_every")):
        p.error(bad)
    name = args.preset or ("cpu" if "cifar" in args.benchmark else "quick")
    try:
        base = preset(args.benchmark, name)
        if args.steps:
            base = with_overrides(base, {"steps": args.steps, "epochs": None})
        variants = [parse_variant(v, args.strategy) for v in args.variant]
        presets = {v.name: settings(base, v) for v in variants}
        root = resolve_data_root(args.data_root, args.benchmark)
    except ValueError as err:
        p.error(str(err))
    if len({v.name for v in variants}) < len(variants):
        p.error("two --variant options share a name; give each its own.")
    info = info_of(args.benchmark, "task")
    n_tasks = args.tasks or info.n_tasks
    out = Path(args.out)
    command = "python benchmarks/variants.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    jobs, clashes = {}, []
    for v in variants:
        for seed in range(args.seeds):
            path = out / "runs" / f"{v.name}-seed{seed}.json"
            old = load_run(path) if path.exists() else None
            want = settings_of(v.strategy, presets[v.name].to_dict())
            if old is not None:
                same = (
                    old["strategy"] == v.strategy and len(old["acc"]) == n_tasks
                    and settings_of(v.strategy, old["config"]["preset_settings"]) == want
                )  # fmt: skip
                if same:
                    continue
                if not args.force:
                    clashes.append(f"{v.name} (seed {seed}), made by: {old['variants_command']}")
                    continue
            checkpoint = out / "checkpoints" / f"{v.name}-seed{seed}.pt"
            jobs[v.name, seed] = Job(
                args.benchmark, str(root), "task", n_tasks, name, presets[v.name], v.strategy, seed, command,
                checkpoint=str(checkpoint), resume=True, every=args.checkpoint_every, validation=VALIDATION,
            )  # fmt: skip
    if clashes:
        p.error(
            "these variants are recorded in --out with other settings: " + "; ".join(clashes)
            + ". Give them other names, use another --out, or --force to replace them."
        )
    order = [v.name for v in variants]
    by_name = {v.name: v for v in variants}

    def landed(key, record: dict) -> None:
        v, seed = key
        record.update(variant=v, overrides=by_name[v].overrides, evaluated_on=EVALUATED_ON, variants_command=command)
        write_json(out / "runs" / f"{v}-seed{seed}.json", record)
        Path(jobs[key].checkpoint).unlink(missing_ok=True)
        atomic_write(out / "variants.md", table(out, order))
        print(f"{v} seed {seed}: final {record['final_avg_acc'] * 100:.2f} %", flush=True)

    def failed(key, why: str) -> None:
        print(f"{key[0]} seed {key[1]} failed: {why} (log: {out / 'logs' / log_name(key)}.log)", flush=True)

    resources = Resources(workers=args.workers, cpus_per_run=args.cpus_per_run or 1.0, threads_=args.threads)
    print(f"{len(jobs)} runs to train in {out}", flush=True)
    try:
        with sigterm_as_interrupt():
            run_grid(
                execute, jobs, resources, on_start=lambda key, info: None, on_result=landed, on_failure=failed,
                log_dir=out / "logs",
            )  # fmt: skip
    except GridError as err:
        print(f"variants: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("variants: interrupted; finished runs are written. Run the same command to go on.", file=sys.stderr)
        return 130
    if (out / "runs").exists():
        atomic_write(out / "variants.md", table(out, order))
    return 0
