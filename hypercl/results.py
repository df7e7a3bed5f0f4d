"""The results schema: reading and checking what ``hypercl-bench`` writes.

A results folder holds ``runs/<strategy>-seed<k>.json`` (one finished run each) and
``summary.json``; :func:`load_results` reads one folder and checks every run against the
schema, so plots and notebooks never draw from a malformed or half-written file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

STRATEGY_ORDER = ("hypercl", "naive", "ewc", "si", "lwf", "replay", "joint")

RUN_KEYS = (
    "benchmark", "scenario", "strategy", "seed", "preset", "config", "versions", "machine",
    "acc", "final_avg_acc", "bwt", "forgetting", "train_time_s", "time_per_step_ms", "command",
)  # fmt: skip


def strategy_order(name: str) -> tuple[int, str]:
    """Sort key that lists strategies in the same order in every table and plot (unknown last)."""
    return (STRATEGY_ORDER.index(name) if name in STRATEGY_ORDER else len(STRATEGY_ORDER), name)


def cl_metrics(acc: list[list[float | None]]) -> dict[str, float]:
    """Final average accuracy, backward transfer and forgetting of an accuracy matrix.

    ``acc[i][j]``: accuracy on task ``j`` after training task ``i`` (``None`` for j > i, and
    for the earlier tasks of a row that evaluated only the task just trained: a run with
    ``eval_every`` > 1; its diagonal and last row are whole). BWT = mean over j < T-1 of
    ``acc[T-1][j] - acc[j][j]``; forgetting = mean over the same j of the best earlier
    accuracy on j (over the rows that evaluated it) minus the final one.
    """
    last, n = acc[-1], len(acc)
    final = sum(last) / n
    if n == 1:
        return {"final_avg_acc": final, "bwt": 0.0, "forgetting": 0.0}
    bwt = sum(last[j] - acc[j][j] for j in range(n - 1)) / (n - 1)
    best = [max(a for a in (acc[i][j] for i in range(j, n - 1)) if a is not None) for j in range(n - 1)]
    forgetting = sum(best[j] - last[j] for j in range(n - 1)) / (n - 1)
    return {"final_avg_acc": final, "bwt": bwt, "forgetting": forgetting}


def evaluates_all(task: int, n_tasks: int, every: int = 1) -> bool:
    """Whether the evaluation after ``task`` (0-based) covers every task so far: after every
    ``every``-th task and after the last; the others evaluate only the task just trained."""
    return (task + 1) % every == 0 or task == n_tasks - 1


def accuracy_matrix_row(metrics: dict, stream, n_tasks: int | None = None) -> list[float | None]:
    """Row ``i`` of the accuracy matrix from the metrics ``strategy.eval(stream)`` returned
    (Avalanche's ``accuracy_metrics(experience=True)``): accuracy on each experience of
    ``stream`` at its index, ``None`` at the others (tasks not evaluated or not trained yet),
    ``n_tasks`` entries (default: up to the last experience of ``stream``)."""
    prefix = "Top1_Acc_Exp/eval_phase/test_stream"
    stream = list(stream)
    row = [None] * (n_tasks or max(e.current_experience for e in stream) + 1)
    for e in stream:
        row[e.current_experience] = metrics[f"{prefix}/Task{e.task_label:03d}/Exp{e.current_experience:03d}"]
    return row


def load_run(path: Path) -> dict | None:
    """A finished run's record, or ``None`` if the file is missing or incomplete (a run
    still in progress); :func:`check_run` says what is wrong with one that should be whole."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and all(k in data for k in RUN_KEYS) else None


def check_run(run: dict, source: str = "run") -> None:
    """Raise ``ValueError`` naming ``source`` and the field unless ``run`` follows the schema:
    every key of :data:`RUN_KEYS`; ``acc`` square with accuracies in [0, 1] on and below the
    diagonal and ``None`` above it; headline metrics equal to the ones ``acc`` gives."""
    fix = "rerun the benchmark for this strategy and seed (hypercl-bench ... --force) or remove the file"
    missing = [k for k in RUN_KEYS if k not in run]
    if missing:
        raise ValueError(f"{source}: missing {missing}; a results run has {list(RUN_KEYS)}. To fix: {fix}.")
    acc = run["acc"]
    n = len(acc) if isinstance(acc, list) else 0
    if n == 0 or not all(isinstance(row, list) and len(row) == n for row in acc):
        raise ValueError(f"{source}: 'acc' must be a non-empty square list of lists (tasks x tasks). To fix: {fix}.")
    for i, row in enumerate(acc):
        for j, a in enumerate(row):
            number = isinstance(a, (int, float)) and 0 <= a <= 1
            if j > i:
                ok, want = a is None, "null (not trained yet)"
            elif j == i or i == n - 1:  # the task just trained and the final row: always evaluated
                ok, want = number, "an accuracy in [0, 1]"
            else:  # null where the run evaluated only the task just trained (eval_every > 1)
                ok, want = a is None or number, "an accuracy in [0, 1] or null (not evaluated)"
            if not ok:
                raise ValueError(f"{source}: acc[{i}][{j}] is {a!r}, expected {want}. To fix: {fix}.")
    for key, value in cl_metrics(acc).items():
        if not isinstance(run[key], (int, float)) or not math.isclose(run[key], value, abs_tol=1e-9):
            raise ValueError(
                f"{source}: {key} is {run[key]!r} but its accuracy matrix gives {value!r}; "
                f"the file was edited or corrupted. To fix: {fix}."
            )


@dataclass(frozen=True)
class Results:
    """One benchmark's results: its checked runs and its summary."""

    folder: Path
    benchmark: str
    scenario: str
    preset: str
    runs: list[dict]
    summary: dict

    @property
    def name(self) -> str:
        """A label like ``split-mnist (task-incremental, paper)``."""
        return f"{self.benchmark} ({self.scenario}-incremental, {self.preset})"

    @property
    def strategies(self) -> list[str]:
        return sorted({r["strategy"] for r in self.runs}, key=strategy_order)


def load_results(folder: str | os.PathLike) -> Results:
    """Read and check a results folder written by ``hypercl-bench``.

    Raises:
        FileNotFoundError: no ``summary.json`` or no run in ``folder``.
        ValueError: a run breaks the schema (see :func:`check_run`) or belongs to another
            benchmark, scenario or preset than the summary.
    """
    folder = Path(folder)
    summary_path = folder / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{summary_path} does not exist: expected a results folder written by hypercl-bench "
            "(summary.json and runs/*.json). Point at one, e.g. results/split-mnist."
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{summary_path} is not valid JSON ({err}); rerun hypercl-bench to rewrite it.") from None
    for key in ("benchmark", "scenario", "preset", "strategies"):
        if key not in summary:
            raise ValueError(f"{summary_path}: missing {key!r}; rerun hypercl-bench to rewrite it.")
    paths = sorted((folder / "runs").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"{folder / 'runs'} holds no run JSON: nothing to load.")
    runs = []
    for path in paths:
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); rerun that strategy and seed with --force.") from None
        check_run(run, str(path))
        expected = (summary["benchmark"], summary["scenario"], summary["preset"])
        if (run["benchmark"], run["scenario"], run["preset"]) != expected:
            raise ValueError(
                f"{path} is a {run['benchmark']}/{run['scenario']}/{run['preset']} run but "
                f"{summary_path} is {'/'.join(expected)}: keep each benchmark in its own folder."
            )
        runs.append(run)
    return Results(folder, summary["benchmark"], summary["scenario"], summary["preset"], runs, summary)


def find_results(root: str | os.PathLike = "results") -> list[Path]:
    """Folders under ``root`` (one level deep) that hold a ``summary.json``, sorted."""
    return sorted(p.parent for p in Path(root).glob("*/summary.json"))
