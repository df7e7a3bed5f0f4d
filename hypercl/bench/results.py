"""Results files: one JSON per (strategy, seed), a summary, a markdown table. Atomic writes."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from hypercl.atomic import atomic_path
from hypercl.results import RUN_KEYS, cl_metrics, load_run, strategy_order  # noqa: F401 (re-exported)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (:func:`hypercl.atomic.atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def run_path(out: Path, strategy: str, seed: int) -> Path:
    return out / "runs" / f"{strategy}-seed{seed}.json"


def _stats(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def summarize(runs: list[dict], *, benchmark: str, scenario: str, preset: str, command: str) -> dict:
    """``summary.json``: per strategy, mean/std/per-seed of the headline metrics."""
    strategies: dict[str, dict] = {}
    for name in sorted({r["strategy"] for r in runs}, key=strategy_order):
        mine = sorted((r for r in runs if r["strategy"] == name), key=lambda r: r["seed"])
        strategies[name] = {
            "seeds": [r["seed"] for r in mine],
            **{k: _stats([r[k] for r in mine]) for k in ("final_avg_acc", "bwt", "forgetting")},
            **_inference_stats(mine),
            "time_per_step_ms": _stats([r["time_per_step_ms"] for r in mine]),
            # None after a task whose evaluation covered only that task (eval_every > 1)
            "avg_acc_curve": [
                None if None in (row := [_row_mean(r["acc"][i]) for r in mine]) else statistics.fmean(row)
                for i in range(len(mine[0]["acc"]))
            ],
        }
    return {
        "benchmark": benchmark,
        "scenario": scenario,
        "preset": preset,
        "seeds": sorted({r["seed"] for r in runs}),
        "command": command,
        "strategies": strategies,
    }


def _inference_stats(runs: list[dict]) -> dict:
    """Task-inference accuracy, overall and per method, where the runs inferred tasks."""
    if not all("final_avg_task_inference_acc" in r for r in runs):
        return {}
    methods = runs[0]["inference_methods"]
    return {
        "final_avg_task_inference_acc": _stats([r["final_avg_task_inference_acc"] for r in runs]),
        "inference_methods": {
            m: {
                k: _stats([r["inference_methods"][m][k] for r in runs])
                for k in ("final_avg_acc", "final_avg_task_inference_acc", "ms_per_1000_inputs")
            }
            for m in methods
        },
    }


def _row_mean(row: list[float | None]) -> float | None:
    """Mean accuracy over the tasks trained so far (the row up to its last entry); ``None``
    where one of them was not evaluated."""
    last = max(j for j, a in enumerate(row) if a is not None)
    seen = row[: last + 1]
    return None if None in seen else sum(seen) / len(seen)


def _pct(stat: dict, sign: str = "") -> str:
    """``mean ± std`` in percent; the mean alone where there is one seed (no spread to show)."""
    mean = f"{100 * stat['mean']:{sign}.2f}"
    return mean if len(stat["per_seed"]) < 2 else f"{mean} ± {100 * stat['std']:.2f}"


def markdown_table(summary: dict) -> str:
    """``summary.md``: the summary as a table, in percent. Where the strategies have different
    numbers of seeds (a grid still landing), a column gives each one's."""
    partial = len({len(s["seeds"]) for s in summary["strategies"].values()}) > 1
    lines = [
        f"# {summary['benchmark']} ({summary['scenario']}-incremental), preset `{summary['preset']}`",
        "",
        f"Seeds {summary['seeds']}. Command: `{summary['command']}`",
        "",
        "| strategy |" + " seeds |" * partial + " final avg acc (%) | BWT (points) | forgetting (points) | ms / step |",
        "|---|" + "---|" * partial + "---|---|---|---|",
    ]
    for name, s in summary["strategies"].items():
        ms = s["time_per_step_ms"]["mean"]
        seeds = f" {len(s['seeds'])} |" * partial
        lines.append(
            f"| {name} |{seeds} {_pct(s['final_avg_acc'])} | {_pct(s['bwt'], '+')} | {_pct(s['forgetting'])} | {ms:.1f} |"
        )
    for name, s in summary["strategies"].items():
        if "inference_methods" not in s:
            continue
        lines += [
            "",
            f"{name}: task inference by method, after the last task (the first method decides the outputs above)",
            "",
            "| method | task-inference acc (%) | final avg acc (%) | ms / 1000 inputs |",
            "|---|---|---|---|",
        ]
        for method, m in s["inference_methods"].items():
            lines.append(
                f"| {method} | {_pct(m['final_avg_task_inference_acc'])} | {_pct(m['final_avg_acc'])} "
                f"| {m['ms_per_1000_inputs']['mean']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def terminal_table(summary: dict) -> str:
    rows = [("strategy", "final acc %", "BWT", "forgetting", "ms/step")]
    for name, s in summary["strategies"].items():
        rows.append((
            name,
            _pct(s["final_avg_acc"]),
            _pct(s["bwt"], "+"),
            _pct(s["forgetting"]),
            f"{s['time_per_step_ms']['mean']:.1f}",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
