"""``hypercl-bench``: HyperCL and Avalanche's baselines side by side on one benchmark."""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from hypercl.bench.datasets import BENCHMARKS, CIFAR_SETS, SCENARIOS, build, info_of, resolve_data_root
from hypercl.bench.presets import preset
from hypercl.bench.results import (
    atomic_write,
    load_run,
    markdown_table,
    run_path,
    summarize,
    terminal_table,
    write_json,
)
from hypercl.bench.run import run_one, silence_avalanche_notices
from hypercl.bench.strategies import STRATEGIES, settings_of
from hypercl.checkpoint import CheckpointError, load_checkpoint
from hypercl.data import DATA_ROOT_ENV
from hypercl.plotting import plot_all
from hypercl.speedups import keep_freed_memory


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hypercl-bench",
        description="Run HyperCL and Avalanche's baselines on a continual-learning benchmark; "
        "write per-run JSON, summary.json, summary.md and plots.",
    )
    p.add_argument("benchmark", choices=sorted(BENCHMARKS))
    p.add_argument(
        "--scenario",
        default="task",
        choices=list(SCENARIOS),
        help="; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()),
    )
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated: {', '.join(STRATEGIES)}")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0 .. N-1)")
    p.add_argument(
        "--preset",
        default=None,
        help="paper (the paper's settings; CIFAR also paper-zenke) or a CPU budget: quick (MNIST, "
        "minutes), cpu (CIFAR, under 40 minutes); default quick, cpu for CIFAR",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding MNIST/raw/..., cifar-100-python/ or cifar-10-batches-py/ "
        f"(default: ${DATA_ROOT_ENV}, else a cache folder, downloaded if online)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: results/<benchmark>[-<scenario> unless task][-<preset> unless paper])",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--steps", type=int, default=None, help="steps per task instead of the preset's (smoke runs)")
    p.add_argument("--tasks", type=int, default=None, help="train only the first N tasks (smoke runs)")
    p.add_argument("--force", action="store_true",
                   help="re-run (strategy, seed) pairs that already finished; start unfinished ones over")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="continue unfinished runs from their checkpoints in <out>/checkpoints/")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also checkpoint every STEPS training steps (default: after every task only)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    silence_avalanche_notices()
    keep_freed_memory()  # every strategy alike: no page faults for the step's freed buffers
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    command = shlex.join(["hypercl-bench", *argv])
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        parser().error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if args.force and args.resume:
        parser().error("--force starts unfinished runs over and --resume continues them: pass one of them")
    for flag in ("seeds", "steps", "tasks", "threads", "checkpoint_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser().error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.preset is None:
        args.preset = "cpu" if args.benchmark in CIFAR_SETS else "quick"
    try:
        settings = preset(args.benchmark, args.preset)
    except ValueError as err:
        parser().error(str(err))
    if args.steps:
        settings = replace(settings, steps=args.steps, epochs=None)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        info = info_of(args.benchmark, args.scenario)
    except ValueError as err:
        parser().error(str(err))
    n_tasks = min(args.tasks or info.n_tasks, info.n_tasks)
    budget = {"preset": args.preset, "scenario": info.scenario, "n_tasks": n_tasks, "settings": settings.to_dict()}
    out = args.out or Path("results") / "-".join(
        [args.benchmark] + [args.scenario] * (args.scenario != "task") + [args.preset] * (args.preset != "paper")
    )
    try:
        root = resolve_data_root(args.data_root, args.benchmark)
    except (FileNotFoundError, ValueError) as err:  # missing, empty, truncated or other data
        print(f"hypercl-bench: {err}", file=sys.stderr)
        return 2

    plan = {seed: [s for s in strategies if args.force or not _finished(out, s, seed, budget)] for seed in range(args.seeds)}
    problems, resumable = _checkpoints(out, plan, args, budget)
    if problems:  # before anything is trained or overwritten
        print("\n".join(f"hypercl-bench: {p}" for p in problems), file=sys.stderr)
        return 2

    failed = []
    for seed in range(args.seeds):
        todo = plan[seed]
        for name in todo:
            if not args.force and run_path(out, name, seed).exists():
                print(f"{name} seed {seed}: the stored run used other settings; running it again",
                      file=sys.stderr)  # fmt: skip
        if not todo:
            continue
        try:
            benchmark = build(args.benchmark, root, seed, scenario=info.scenario, n_tasks=n_tasks)
        except (FileNotFoundError, ValueError) as err:  # data the checks before could not see
            print(f"hypercl-bench: {err}", file=sys.stderr)
            return 2
        for name in todo:
            print(f"{args.benchmark} {info.scenario} [{args.preset}] {name} seed {seed}", file=sys.stderr, flush=True)
            path = checkpoint_path(out, name, seed)
            resume = None
            if (name, seed) in resumable:
                resume = load_checkpoint(path, map_location=args.device)
                print(f"  resuming from {path} ({_where(resume['position'])})", file=sys.stderr, flush=True)
            elif path.exists():  # --force, or a finished run with other settings
                path.unlink()
            try:
                record = run_one(
                    benchmark, info, args.preset, settings, name, seed,
                    device=args.device, command=command, n_tasks=n_tasks,
                    checkpoint=path, every=args.checkpoint_every, resume=resume,
                )  # fmt: skip
            except (RuntimeError, ValueError) as err:  # report, keep the other runs going
                traceback.print_exc()
                kept = f"; its last checkpoint is kept in {path} (--resume)" if path.exists() else ""
                failed.append((name, seed, f"{err}{kept}"))
                continue
            write_json(run_path(out, name, seed), record)
            write_summary(out, info.name, info.scenario, budget, command)
            print(f"  final {100 * record['final_avg_acc']:.2f} %, BWT {100 * record['bwt']:+.2f}, "
                  f"{record['time_per_step_ms']:.1f} ms/step", file=sys.stderr, flush=True)  # fmt: skip

    summary = write_summary(out, info.name, info.scenario, budget, command)
    if summary:
        print(terminal_table(summary))
    for name, seed, err in failed:
        print(f"hypercl-bench: {name} seed {seed} failed: {err}", file=sys.stderr)
    return 1 if failed else 0


def checkpoint_path(out: Path, strategy: str, seed: int) -> Path:
    return out / "checkpoints" / f"{strategy}-seed{seed}.pt"


def _where(position: dict) -> str:
    if position["step"]:
        return f"step {position['step']} of task {position['experience']}"
    return f"{position['experience']} tasks done"


def _checkpoints(out: Path, plan: dict[int, list[str]], args, budget: dict) -> tuple[list[str], set]:
    """The checkpoints of the runs in ``plan``: which to resume, and what stops the runs from
    starting (an unfinished run without --resume or --force, a broken checkpoint, or one that
    cannot be resumed under these settings). A finished run's checkpoint from other settings
    is replaced, as its results are."""
    problems, resume = [], set()
    for seed, names in plan.items():
        for name in names:
            path = checkpoint_path(out, name, seed)
            if args.force or not path.exists():
                continue
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError as err:
                problems.append(str(err))
                continue
            extra, pos = ckpt["extra"], ckpt["position"]
            if not isinstance(extra, dict) or not {"benchmark", "budget", "command"} <= set(extra):
                problems.append(f"{path} was not written by hypercl-bench: move it out of {path.parent}.")
                continue
            ours = {"benchmark": args.benchmark, **budget}
            theirs = {"benchmark": extra["benchmark"], **extra["budget"]}
            differs = _differs(name, ours, theirs)
            if differs and pos["experience"] == theirs["n_tasks"]:
                continue  # a finished run with other settings: run again, as its JSON is
            if not args.resume:
                problems.append(
                    f"{path} holds an unfinished run of {name} seed {seed}: pass --resume to continue "
                    "it, or --force to start it over."
                )
            elif differs:
                problems.append(
                    f"{path} was written by `{extra['command']}`, with other settings than this command's "
                    f"({', '.join(differs)} differ). Resume it with that command, or pass --force to start "
                    "it over with these settings."
                )
            else:
                resume.add((name, seed))
    return problems, resume


def _differs(name: str, ours: dict, theirs: dict) -> list[str]:
    keys = [k for k in ("benchmark", "preset", "scenario", "n_tasks") if ours[k] != theirs[k]]
    mine = settings_of(name, ours["settings"], ours["scenario"])
    other = settings_of(name, theirs["settings"], theirs["scenario"])
    return keys + [k for k in mine if mine[k] != other.get(k)]


def _matches(record: dict, budget: dict) -> bool:
    """Whether ``record`` ran under ``budget``: same preset, tasks and the settings its strategy uses."""
    cfg, name, scenario = record["config"], record["strategy"], budget.get("scenario", "task")
    return (
        record["preset"] == budget["preset"]
        and record.get("scenario", "task") == scenario
        and cfg.get("n_tasks") == budget["n_tasks"]
        and name in STRATEGIES
        and settings_of(name, cfg.get("preset_settings", {}), scenario) == settings_of(name, budget["settings"], scenario)
    )


def _finished(out: Path, strategy: str, seed: int, budget: dict) -> bool:
    record = load_run(run_path(out, strategy, seed))
    return record is not None and _matches(record, budget)


def write_summary(out: Path, benchmark: str, scenario: str, budget: dict, command: str) -> dict | None:
    """Summary, table and plots over every finished run in ``out`` with this budget."""
    runs = [r for p in sorted((out / "runs").glob("*.json")) if (r := load_run(p)) and _matches(r, budget)]
    if not runs:
        return None
    summary = summarize(runs, benchmark=benchmark, scenario=scenario, preset=budget["preset"], command=command)
    settings = budget["settings"]
    summary["steps_per_task"] = None if settings.get("epochs") else settings["steps"]
    summary["epochs_per_task"] = settings.get("epochs")
    summary["n_tasks"] = budget["n_tasks"]
    summary["run_commands"] = sorted({r["command"] for r in runs})
    write_json(out / "summary.json", summary)
    atomic_write(out / "summary.md", markdown_table(summary))
    plot_all(runs, out)
    return summary


if __name__ == "__main__":
    sys.exit(main())
