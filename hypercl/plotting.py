"""Plots of continual-learning results, with one colour per strategy across every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_ORDER = ("hypercl", "naive", "ewc", "si", "lwf", "replay", "joint")


def colour(strategy: str) -> str:
    """The colour ``strategy`` has in every plot."""
    palette = plt.get_cmap("tab10").colors
    i = _ORDER.index(strategy) if strategy in _ORDER else len(_ORDER) + sum(map(ord, strategy))
    return matplotlib.colors.to_hex(palette[i % len(palette)])


def accuracy_matrices(runs: list[dict]) -> dict[str, np.ndarray]:
    """Per strategy, the accuracy matrix averaged over seeds (NaN where j > i)."""
    out: dict[str, list[np.ndarray]] = {}
    for r in runs:
        m = np.array([[np.nan if a is None else a for a in row] for row in _square(r["acc"])])
        out.setdefault(r["strategy"], []).append(m)
    return {k: np.mean(out[k], axis=0) for k in _strategies(runs)}


def _square(acc: list[list[float | None]]) -> list[list[float | None]]:
    n = len(acc)
    return [row + [None] * (n - len(row)) for row in acc]


def strategy_order(name: str) -> tuple[int, str]:
    """Sort key that lists strategies in the same order in every table and plot (unknown last)."""
    return (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)


def _strategies(runs: list[dict]) -> list[str]:
    """The strategies in ``runs``, in :func:`strategy_order`."""
    return sorted({r["strategy"] for r in runs}, key=strategy_order)


def average_accuracy_curves(runs: list[dict]) -> dict[str, np.ndarray]:
    """Per strategy, an array (seeds × tasks) of the average accuracy over the tasks seen so far."""
    return {
        name: np.array([[np.nanmean(np.array(row, dtype=float)) for row in r["acc"]] for r in runs if r["strategy"] == name])
        for name in _strategies(runs)
    }


def plot_average_accuracy(runs: list[dict], path: Path, title: str = "") -> None:
    """Average accuracy over the tasks seen so far, after each task: mean line, ± std band.

    The right panel zooms in on the strategies that end within 2 points of the best.
    """
    curves = average_accuracy_curves(runs)
    means = {name: 100 * c.mean(0) for name, c in curves.items()}
    best = max(m[-1] for m in means.values())
    close = [m for m in means.values() if m[-1] >= best - 2]
    zoom_low = min(float(np.min(m)) for m in close) - 0.3
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax in axes:
        for name, c in curves.items():
            x = np.arange(1, c.shape[1] + 1)
            mean, std = means[name], 100 * c.std(0)
            ax.plot(x, mean, marker="o", ms=3, label=name, color=colour(name))
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=colour(name))
        ax.set(xlabel="tasks trained", ylabel="average accuracy on tasks so far (%)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[1].set_ylim(zoom_low, min(100.05, best + 0.5 + (best - zoom_low) * 0.1))
    axes[1].set_title(f"zoom: strategies within 2 points of the best ({best:.2f} %)")
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_accuracy_matrices(runs: list[dict], path: Path) -> None:
    """Heatmaps of ``acc[i][j]`` (row: after training task i; column: task j), one per strategy."""
    mats = accuracy_matrices(runs)
    n = len(mats)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, mats.items()):
        im = ax.imshow(100 * m, vmin=max(0, np.nanmin(100 * m)), vmax=100, cmap="viridis")
        ax.set(title=name, xlabel="task j", ylabel="after task i")
        if len(m) <= 10:
            for (i, j), v in np.ndenumerate(m):
                if not np.isnan(v):
                    ax.text(j, i, f"{100 * v:.{1 if len(m) <= 6 else 0}f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
