"""Wall time of a benchmark grid: one run after another in one process, against runs at once on Ray.

Both go through ``hypercl-bench`` in fresh processes, one after the other in this script
on the same machine, into throw-away folders: the sequential grid with torch's default
threads (every core for one run), then ``--workers W --cpus-per-run 1`` (one core per run,
W runs at once). Prints and writes ``grid_speed.md`` / ``grid_speed.json`` into --out.

    python benchmarks/grid_speed.py --out results/grid-speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMING = {"train_time_s", "time_per_step_ms", "finished_at", "command", "machine"}


def grid(args: list[str], out: Path) -> tuple[float, dict]:
    """Run ``hypercl-bench`` with ``args`` into ``out``; its wall time and its records."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hypercl.bench", *args, "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - started
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}
    return wall, runs


def _num(value, spec: str) -> str:
    return "not run" if value is None else format(value, spec)


def _results(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="split-mnist")
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", default="1,2", help="grid sizes to time, in seeds (default 1,2)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sequential-threads", type=int, default=None,
                   help="torch threads of the sequential grid (default: torch's, every core)")  # fmt: skip
    p.add_argument("--no-fresh-process", action="store_true", help="leave out the --fresh-process grid")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    command = shlex.join(["python", "benchmarks/grid_speed.py", *sys.argv[1:]])
    base = [args.benchmark, "--preset", args.preset] + (["--data-root", args.data_root] if args.data_root else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seeds in [int(s) for s in args.seeds.split(",")]:
            grid_args = [*base, "--seeds", str(seeds)]
            threads = ["--threads", str(args.sequential_threads)] if args.sequential_threads else []
            seq, seq_runs = grid([*grid_args, *threads], Path(tmp) / f"seq-{seeds}")
            ray_args = [*grid_args, "--workers", str(args.workers), "--cpus-per-run", "1"]
            par, par_runs = grid(ray_args, Path(tmp) / f"ray-{seeds}")
            if args.no_fresh_process:
                fresh, fresh_runs = None, par_runs
            else:
                fresh, fresh_runs = grid([*ray_args, "--fresh-process"], Path(tmp) / f"fresh-{seeds}")
            assert seq_runs.keys() == par_runs.keys() == fresh_runs.keys(), (seq_runs.keys(), par_runs.keys())
            gap = max(abs(seq_runs[k]["final_avg_acc"] - par_runs[k]["final_avg_acc"]) for k in seq_runs)
            same = None if fresh is None else all(_results(par_runs[k]) == _results(fresh_runs[k]) for k in par_runs)
            rows.append({
                "seeds": seeds, "runs": len(seq_runs), "sequential_s": seq, "workers_s": par, "ratio": par / seq,
                "fresh_process_s": fresh, "fresh_ratio": fresh and fresh / seq, "max_final_acc_gap_points": 100 * gap,
                "workers_equal_fresh_process": same,
            })  # fmt: skip
            print(f"{seeds} seed(s), {len(seq_runs)} runs: sequential {seq:.0f} s, --workers {args.workers} "
                  f"{par:.0f} s (ratio {par / seq:.2f})" + (f", with --fresh-process {fresh:.0f} s (ratio "
                  f"{fresh / seq:.2f})" if fresh else ""), flush=True)  # fmt: skip
    report = {
        "command": command,
        "benchmark": args.benchmark,
        "preset": args.preset,
        "workers": args.workers,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "rows": rows,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grid_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {args.benchmark}, `{args.preset}` preset, every strategy: one run at a time against "
        f"`--workers {args.workers} --cpus-per-run 1`",
        "",
        f"Command: `{command}` ({os.cpu_count()} CPU cores, {report['finished_at']}). Wall time of the",
        "whole `hypercl-bench` command, start-up and Ray's included; the sequential grid runs with",
        f"{f'{args.sequential_threads} torch thread(s)' if args.sequential_threads else 'torch default threads (all cores for one run)'}, "
        "the workers with one thread each.",
        "",
        "| seeds | runs | sequential (s) | workers (s) | ratio | `--fresh-process` (s) | ratio | "
        "final-accuracy gap, workers vs sequential (points) | workers = fresh process |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['seeds']} | {r['runs']} | {r['sequential_s']:.0f} | {r['workers_s']:.0f} | {r['ratio']:.2f} | "
          f"{_num(r['fresh_process_s'], '.0f')} | {_num(r['fresh_ratio'], '.2f')} | {r['max_final_acc_gap_points']:.2f} | "
          f"{ {True: 'yes', False: 'NO', None: 'not run'}[r['workers_equal_fresh_process']]} |" for r in rows),  # fmt: skip
        "",
        "`--fresh-process` starts a new worker process for every run (each pays for importing torch",
        "and Avalanche and reading the data); by default a worker goes on to the next run. The gap",
        "is there because one and two torch threads sum in different orders: under the same threads",
        "a run's record is the same in a worker as in one process (tested), and the last column",
        "compares every record, timings apart, of the two worker modes.",
    ]
    (args.out / "grid_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
