"""``hypercl-bench``: HyperCL and Avalanche's baselines side by side on one benchmark."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from hypercl.bench.datasets import BENCHMARKS, CIFAR_SETS, SCENARIOS, info_of, resolve_data_root
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
from hypercl.bench.grid import GridError, Resources, count_below_one, log_name, preflight, run_grid, sigterm_as_interrupt
from hypercl.bench.run import Job, benchmark_of, execute, silence_avalanche_notices
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
        help="paper (the paper's settings; CIFAR also paper-zenke; pmnist-10 also tuned: paper with "
        "HyperCL's beta chosen on the validation split) or a CPU budget: quick (MNIST, minutes), "
        "cpu (CIFAR, under 40 minutes); default quick, cpu for CIFAR",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding MNIST/raw/..., cifar-100-python/ or cifar-10-batches-py/ "
        f"(default: ${DATA_ROOT_ENV}, else a cache folder, downloaded if online)",
    )
    p.add_argument("--device", default=None,
                   help="cuda or cpu (default: cuda where torch sees a GPU; on Ray, where the run got one)")  # fmt: skip
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: results/<benchmark>[-<scenario> unless task][-<preset> unless paper])",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--steps", type=int, default=None, help="steps per task instead of the preset's (smoke runs)")
    p.add_argument("--tasks", type=int, default=None, help="train only the first N tasks (smoke runs)")
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="evaluate every task so far after every N-th task and the last, only the task just "
                   "trained after the others (default: the preset's; 1 but for pmnist-100's quick preset)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="re-run (strategy, seed) pairs that already finished (also with other settings: "
                   "their results are replaced); start unfinished ones over")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="continue unfinished runs from their checkpoints in <out>/checkpoints/")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also checkpoint every STEPS training steps (default: after every task only)")  # fmt: skip
    ray = p.add_argument_group("several runs at once, on Ray (pip install \"hypercl[ray]\"; see the README's \"Running many runs\")")
    ray.add_argument("--workers", type=int, default=None,
                     help="runs at once, in worker processes of a local Ray instance started and "
                     "stopped here (default 1: one after another in this process, without Ray); with "
                     "--address, default: as many as the cluster has room for")  # fmt: skip
    ray.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                     help="run on this Ray cluster (auto: the one this machine belongs to) instead")  # fmt: skip
    ray.add_argument("--cpus-per-run", type=float, default=None,
                     help="CPUs Ray reserves for each run; its torch threads follow (default 1)")  # fmt: skip
    ray.add_argument("--gpus-per-run", type=float, default=None,
                     help="share of a GPU each run holds, e.g. 0.25: four runs share one GPU (default 0)")  # fmt: skip
    ray.add_argument("--fresh-process", action="store_true",
                     help="a new worker process for every run (default: a worker goes on to a next run, "
                     "as one process does with --workers 1)")  # fmt: skip
    ray.add_argument("--retries", type=int, default=3,
                     help="how often a run whose worker died (killed, preempted, out of memory) starts again, "
                     "from its last checkpoint (default 3)")  # fmt: skip
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
    if bad := count_below_one(args, ("seeds", "steps", "tasks", "eval_every", "threads", "checkpoint_every", "workers")):
        parser().error(bad)
    try:
        resources = resources_of(args)
    except ValueError as err:
        parser().error(str(err))
    if resources.uses_ray and (args.device or "").startswith("cuda") and not resources.gpus_per_run:
        parser().error("--device cuda on Ray needs a GPU for each run: pass --gpus-per-run (1, or 0.25 for four runs per GPU)")
    if args.preset is None:
        args.preset = "cpu" if args.benchmark in CIFAR_SETS else "quick"
    try:
        settings = preset(args.benchmark, args.preset)
    except ValueError as err:
        parser().error(str(err))
    if args.steps:
        settings = replace(settings, steps=args.steps, epochs=None)
    if args.eval_every:
        settings = replace(settings, eval_every=args.eval_every)
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

    ours = {"benchmark": args.benchmark, **budget}
    plan = {seed: [s for s in strategies if args.force or not _finished(out, s, seed, budget)] for seed in range(args.seeds)}
    problems = [_replaces(out, name, seed, ours) for seed, names in plan.items() for name in names if not args.force]
    problems = [p for p in problems if p]
    if not problems:
        problems, resumable = _checkpoints(out, plan, args, budget)
    if problems:  # before anything is trained or overwritten
        print("\n".join(f"hypercl-bench: {p}" for p in problems), file=sys.stderr)
        return 2
    try:
        writable(out, create=False)
        preflight(resources)  # Ray there, and the cluster answering
        first = next((seed for seed, names in plan.items() if names), None)
        if first is not None:  # its data read here: broken data is one message before anything runs
            benchmark_of(args.benchmark, str(root.resolve()), first, info.scenario, n_tasks, 0.0)
            if resources.uses_ray:  # the workers read their own
                benchmark_of.cache_clear()
        writable(out)
    except (FileNotFoundError, ValueError, OSError, GridError) as err:
        print(f"hypercl-bench: {err}", file=sys.stderr)
        return 2

    jobs = {
        (name, seed): Job(
            args.benchmark, str(root.resolve()), info.scenario, n_tasks, args.preset, settings, name, seed, command,
            checkpoint=str(checkpoint_path(out, name, seed).resolve()), resume=True,
            every=args.checkpoint_every, device=args.device,
        )  # fmt: skip
        for seed in range(args.seeds)
        for name in plan[seed]
    }
    for (name, seed) in jobs.keys() - resumable:  # --force, or a finished run whose JSON is gone
        checkpoint_path(out, name, seed).unlink(missing_ok=True)
    failed = []

    def started(key, info_: dict) -> None:
        name, seed = key
        attempt = f" (attempt {info_['attempt']})" if info_["attempt"] > 1 else ""
        _say(f"{args.benchmark} {info.scenario} [{args.preset}] {name} seed {seed}{attempt}")
        if info_.get("resumed"):
            _say(f"  resuming from {info_['checkpoint']} ({info_['resumed']})")

    plotted = [time.monotonic()]

    def finished(key, record: dict) -> None:
        name, seed = key
        write_json(run_path(out, name, seed), record)
        # The summary after every run; the plots (seconds each) at most once a minute and at the end.
        plots = time.monotonic() - plotted[0] > 60
        write_summary(out, info.name, info.scenario, budget, command, plots=plots)
        plotted[0] = time.monotonic() if plots else plotted[0]
        _say(f"{name} seed {seed}: final {100 * record['final_avg_acc']:.2f} %, BWT {100 * record['bwt']:+.2f}, "
             f"{record['time_per_step_ms']:.1f} ms/step")  # fmt: skip

    def broke(key, error: str) -> None:
        name, seed = key
        path = checkpoint_path(out, name, seed)
        kept = f"; its last checkpoint is kept in {path} (--resume)" if path.exists() else ""
        log = f"; its log: {out / 'logs' / log_name(key)}" if resources.uses_ray else ""
        failed.append(f"{name} seed {seed} failed: {error}{kept}{log}")
        _say(f"hypercl-bench: {failed[-1]}")

    try:
        with sigterm_as_interrupt():
            run_grid(execute, jobs, resources, on_start=started, on_result=finished, on_failure=broke,
                     log_dir=out.resolve() / "logs")  # fmt: skip
    except GridError as err:
        print(f"hypercl-bench: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hypercl-bench: interrupted; finished runs are in "
              f"{out / 'runs'}, the others go on from their checkpoints with --resume", file=sys.stderr)  # fmt: skip
        return 130

    summary = write_summary(out, info.name, info.scenario, budget, command)
    if summary:
        print(terminal_table(summary))
    for line in failed:
        print(f"hypercl-bench: {line}", file=sys.stderr)
    return 1 if failed else 0


def resources_of(args) -> Resources:
    """The grid's resources from the flags; ``ValueError`` for flags that only Ray uses, given without it."""
    res = Resources(
        workers=args.workers, cpus_per_run=args.cpus_per_run or 1.0, gpus_per_run=args.gpus_per_run or 0.0,
        address=args.address, retries=args.retries, threads_=args.threads, fresh_process=args.fresh_process,
    )  # fmt: skip
    if not res.uses_ray:
        given = [f for f in ("cpus_per_run", "gpus_per_run") if getattr(args, f) is not None]
        if given:
            raise ValueError(
                f"--{given[0].replace('_', '-')} sets what each run holds on Ray: pass --workers N (N > 1) or "
                "--address too, or leave it out (one run at a time here: --threads sets its CPU threads)"
            )
    if res.cpus_per_run <= 0 or res.gpus_per_run < 0 or res.retries < 0:
        raise ValueError("--cpus-per-run must be above 0, --gpus-per-run and --retries at least 0")
    return res


def writable(out: Path, *, create: bool = True) -> None:
    """Raise ``OSError`` with the way out when ``out`` cannot hold results (before anything trains).

    With ``create``, make ``out`` and write a file there; without, only look at the nearest
    folder that exists on its way (nothing is created).
    """
    try:
        if create:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
                pass
            return
        there = next(p for p in (out, *out.absolute().parents) if p.exists())
        if not there.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if not os.access(there, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OSError(f"cannot write results into --out {out} ({reason}): pass --out a folder you can write") from None


def _say(line: str) -> None:
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def checkpoint_path(out: Path, strategy: str, seed: int) -> Path:
    return out / "checkpoints" / f"{strategy}-seed{seed}.pt"


def _replaces(out: Path, name: str, seed: int, ours: dict) -> str | None:
    """Why the run (``name``, ``seed``) must not start: a finished run of it with other
    settings is stored in ``out`` (only --force replaces it)."""
    record = load_run(run_path(out, name, seed))
    if record is None:
        return None
    cfg = record["config"]
    theirs = {"benchmark": record["benchmark"], "preset": record["preset"],
              "scenario": record.get("scenario", "task"), "n_tasks": cfg.get("n_tasks"),
              "settings": cfg.get("preset_settings", {})}  # fmt: skip
    differs = _differs(name, ours, theirs)
    why = f"{', '.join(differs)} differ" if differs else "its record is of an older format"
    return (
        f"{run_path(out, name, seed)} holds a finished run of {name} seed {seed} with other settings "
        f"({why}), made by `{record['command']}`. "
        "Write to another --out to keep both, or pass --force to replace it (--strategies limits "
        "--force to the runs it names)."
    )


def _checkpoints(out: Path, plan: dict[int, list[str]], args, budget: dict) -> tuple[list[str], set]:
    """The checkpoints of the runs in ``plan``: which to resume, and what stops the runs from
    starting (an unfinished run without --resume or --force, a broken checkpoint, or one that
    cannot be resumed under these settings). A finished run's checkpoint is replaced when
    the run starts over (with --force)."""
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
                continue  # finished, and its JSON is gone: a new run replaces it
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


def write_summary(out: Path, benchmark: str, scenario: str, budget: dict, command: str, plots: bool = True) -> dict | None:
    """Summary, table and (with ``plots``) plots over every finished run in ``out`` with this budget."""
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
    if plots:
        plot_all(runs, out)
    return summary


if __name__ == "__main__":
    sys.exit(main())
