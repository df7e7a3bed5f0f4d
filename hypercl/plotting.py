"""Plots of continual-learning results, with one colour per strategy across every figure.

Every ``plot_*`` takes a :class:`~hypercl.results.Results` (from :func:`load_results`) or a
list of run records and returns a :class:`matplotlib.figure.Figure` built without pyplot
(no global state; a notebook shows it, :func:`save_figure` writes it). From a shell,
``python -m hypercl.plotting results/split-mnist ...`` redraws a folder's PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hypercl.atomic import atomic_path
from hypercl.results import STRATEGY_ORDER, Results, cl_metrics, find_results, load_results, strategy_order

PLOTS = ("average_accuracy", "task_curves", "accuracy_matrices", "forgetting")
"""The PNGs :func:`plot_all` writes into a results folder, without the ``.png``."""


def colour(strategy: str) -> str:
    """The colour ``strategy`` has in every plot."""
    palette = matplotlib.colormaps["tab10"].colors
    i = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER) + sum(map(ord, strategy))
    return matplotlib.colors.to_hex(palette[i % len(palette)])


def _runs(results: Results | list[dict]) -> list[dict]:
    return results.runs if isinstance(results, Results) else list(results)


def _strategies(runs: list[dict]) -> list[str]:
    return sorted({r["strategy"] for r in runs}, key=strategy_order)


def _matrix(run: dict) -> np.ndarray:
    """``acc`` as floats, NaN above the diagonal."""
    return np.array([[np.nan if a is None else a for a in row] for row in run["acc"]], dtype=float)


def accuracy_matrices(results: Results | list[dict]) -> dict[str, np.ndarray]:
    """Per strategy, the stack (seeds, tasks, tasks) of accuracy matrices (NaN where j > i)."""
    runs = _runs(results)
    return {k: np.stack([_matrix(r) for r in runs if r["strategy"] == k]) for k in _strategies(runs)}


def average_accuracy_curves(results: Results | list[dict]) -> dict[str, np.ndarray]:
    """Per strategy, an array (seeds, tasks) of the average accuracy over the tasks seen so far;
    NaN after a task whose evaluation covered only that task (a run with ``eval_every`` > 1)."""
    out = {}
    for k, m in accuracy_matrices(results).items():
        n = m.shape[1]
        lower = np.tril(np.ones((n, n), dtype=bool))
        out[k] = np.where(lower, m, 0.0).sum(2) / lower.sum(1)  # NaN where a seen task is NaN
    return out


def plot_average_accuracy(results: Results | list[dict], title: str = "", zoom: float = 2.0) -> Figure:
    """Average accuracy over the tasks seen so far, after each task: mean line, ± std band.

    The right panel zooms in on the strategies that end within ``zoom`` points of the best.
    """
    curves = average_accuracy_curves(results)
    means = {name: 100 * c.mean(0) for name, c in curves.items()}
    best = max(m[-1] for m in means.values())
    close = [m for m in means.values() if m[-1] >= best - zoom]
    zoom_low = min(float(np.nanmin(m)) for m in close) - 0.3
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax in axes:
        for name, c in curves.items():
            _band(ax, np.arange(1, c.shape[1] + 1), 100 * c, name)
        ax.set(xlabel="tasks trained", ylabel="average accuracy on tasks so far (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_title(title or _title(results))
    axes[1].set_ylim(zoom_low, min(100.05, best + 0.5 + (best - zoom_low) * 0.1))
    axes[1].set_title(f"zoom: strategies within {zoom:g} points of the best ({best:.2f} %)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_task_curves(results: Results | list[dict], title: str = "", cols: int = 5) -> Figure:
    """The forgetting curve of every task: accuracy on task j after training each task i ≥ j,
    one panel per task, one line (mean, ± std band over seeds) per strategy."""
    mats = accuracy_matrices(results)
    n = next(iter(mats.values())).shape[1]
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.6 * cols, 2.3 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for j, ax in enumerate(axes.flat):
        if j >= n:
            ax.axis("off")
            continue
        for name, m in mats.items():
            _band(ax, np.arange(j + 1, n + 1), 100 * m[:, j:, j], name)
        ax.set_title(f"task {j}", fontsize=9)
        ax.set_xlim(0.5, n + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("tasks trained")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title or f"accuracy on each task over training: {_title(results)}", y=0.02, va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.93))
    return fig


def plot_accuracy_matrices(results: Results | list[dict], cols: int = 4) -> Figure:
    """Heatmaps of ``acc[i][j]`` (row: after training task i; column: task j), averaged over
    seeds, one per strategy, on one colour scale."""
    mats = {k: 100 * m.mean(0) for k, m in accuracy_matrices(results).items()}  # NaN above the diagonal
    low = max(0.0, min(float(np.nanmin(m)) for m in mats.values()))
    cols = min(len(mats), cols)
    rows = -(-len(mats) // cols)
    fig = Figure(figsize=(3.2 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, m) in zip(axes.flat, mats.items()):
        image = ax.imshow(m, vmin=low, vmax=100, cmap="viridis")
        ax.set_title(name, color=colour(name))
        ax.set(xlabel="task j", ylabel="after task i")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(m) <= 10:
            for (i, j), v in np.ndenumerate(m):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.{1 if len(m) <= 6 else 0}f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(image, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(mats) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_forgetting(results: Results | list[dict], title: str = "") -> Figure:
    """Bars of backward transfer and forgetting (points; mean, std over seeds as error bars)."""
    runs = _runs(results)
    names = _strategies(runs)
    metrics = {k: [cl_metrics(r["acc"]) for r in runs if r["strategy"] == k] for k in names}
    fig = Figure(figsize=(11, 3.6))
    for ax, key, label in zip(fig.subplots(1, 2), ("bwt", "forgetting"), ("BWT (points, higher is better)",
                                                                           "forgetting (points, lower is better)")):  # fmt: skip
        values = [100 * np.array([m[key] for m in metrics[k]]) for k in names]
        means = [v.mean() for v in values]
        ax.bar(names, means, yerr=[v.std() for v in values], color=[colour(k) for k in names], capsize=3)
        for x, mean in enumerate(means):
            ax.annotate(f"{mean:+.2f}" if key == "bwt" else f"{mean:.2f}", (x, mean), ha="center",
                        va="bottom" if mean >= 0 else "top", fontsize=7, xytext=(0, 2 if mean >= 0 else -2),
                        textcoords="offset points")  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title or _title(results), fontsize=10)
    fig.tight_layout()
    return fig


def plot_task_matrices(matrices: dict[str, np.ndarray], tasks: list[int] | None = None) -> Figure:
    """Side-by-side annotated heatmaps of task-by-task matrices, e.g. ``{"embedding cosine
    similarity": ..., "relative weight distance": ...}`` from :mod:`hypercl.analysis`."""
    fig = Figure(figsize=(4.2 * len(matrices), 3.6))
    for ax, (label, m) in zip(fig.subplots(1, len(matrices), squeeze=False)[0], matrices.items()):
        m = np.asarray(m, dtype=float)
        ticks = list(range(len(m))) if tasks is None else tasks
        image = ax.imshow(m, cmap="magma")
        ax.set(title=label, xlabel="task", ylabel="task", xticks=range(len(m)), yticks=range(len(m)))
        ax.set_xticklabels(ticks)
        ax.set_yticklabels(ticks)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < m.mean() else "k")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_path_accuracy(alphas, accuracy: dict[int, list[float]], a: int, b: int) -> Figure:
    """Accuracy per task along the embedding path from task ``a`` (α = 0) to ``b`` (α = 1),
    as :func:`hypercl.analysis.path_accuracy` returns it."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    palette = matplotlib.colormaps["tab10"].colors
    for i, (task, values) in enumerate(accuracy.items()):
        ax.plot(alphas, 100 * np.asarray(values), marker="o", ms=3, color=palette[i % 10], label=f"task {task}")
    ax.set(xlabel=f"α: embedding (1 − α)·e_{a} + α·e_{b}", ylabel="accuracy (%)",
           title=f"networks between task {a} and task {b}")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(results: Results | list[dict], title: str = "") -> dict[str, Figure]:
    """Every results plot of one benchmark, keyed by the names in :data:`PLOTS`."""
    return {
        "average_accuracy": plot_average_accuracy(results, title),
        "task_curves": plot_task_curves(results, title),
        "accuracy_matrices": plot_accuracy_matrices(results),
        "forgetting": plot_forgetting(results, title),
    }


def plot_all(results: Results | list[dict], folder: str | Path, title: str = "") -> list[Path]:
    """Write every plot of :data:`PLOTS` into ``folder`` as PNG; returns the paths."""
    return [save_figure(fig, Path(folder) / f"{name}.png") for name, fig in figures(results, title).items()]


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as ``path`` whole or not at all (:func:`hypercl.atomic.atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


def _band(ax, x: np.ndarray, values: np.ndarray, name: str) -> None:
    """Mean line and ± std band over the seeds (rows) of ``values``, through the points that
    were evaluated (columns all NaN, by ``eval_every``, are left out; the line joins the rest)."""
    kept = ~np.isnan(values).all(0)
    x, values = x[kept], values[:, kept]
    mean, std = values.mean(0), values.std(0)
    ax.plot(x, mean, marker="o", ms=3, label=name, color=colour(name))
    ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=colour(name))


def _title(results: Results | list[dict]) -> str:
    if isinstance(results, Results):
        return results.name
    r = _runs(results)[0]
    return f"{r['benchmark']} ({r['scenario']}-incremental, {r['preset']})"


def main(argv: list[str] | None = None) -> int:
    """Redraw the PNGs of the given results folders (default: every folder under results/)."""
    folders = [Path(a) for a in (sys.argv[1:] if argv is None else argv)] or find_results("results")
    for folder in folders:
        for path in plot_all(load_results(folder), folder):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
