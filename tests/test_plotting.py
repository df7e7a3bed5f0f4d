"""The results schema check and the plots drawn from results: values and colours, not pixels."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hypercl.plotting import (
    PLOTS,
    accuracy_matrices,
    average_accuracy_curves,
    colour,
    figures,
    plot_all,
    plot_average_accuracy,
    plot_forgetting,
    plot_task_curves,
)
from hypercl.results import cl_metrics, find_results, load_results

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _run(strategy, seed, acc):
    return {"benchmark": "toy", "scenario": "task", "strategy": strategy, "seed": seed, "preset": "p",
            "config": {}, "versions": {}, "machine": {}, "acc": acc, **cl_metrics(acc),
            "train_time_s": 1.0, "time_per_step_ms": 1.0, "command": "hypercl-bench toy"}  # fmt: skip


RUNS = [
    _run("naive", 0, [[0.9, None, None], [0.5, 0.9, None], [0.3, 0.6, 0.95]]),
    _run("naive", 1, [[0.8, None, None], [0.6, 0.9, None], [0.5, 0.7, 0.85]]),
    _run("hypercl", 0, [[0.9, None, None], [0.9, 0.8, None], [0.88, 0.8, 0.9]]),
]


def _write(folder: Path, runs=RUNS) -> Path:
    (folder / "runs").mkdir(parents=True)
    for r in runs:
        (folder / "runs" / f"{r['strategy']}-seed{r['seed']}.json").write_text(json.dumps(r))
    (folder / "summary.json").write_text(json.dumps({"benchmark": "toy", "scenario": "task", "preset": "p",
                                                     "strategies": {}}))  # fmt: skip
    return folder


def test_task_curves_plot_the_seed_mean_of_each_column():
    fig = plot_task_curves(RUNS)
    axes = [ax for ax in fig.axes if ax.lines]
    assert len(axes) == 3
    naive = {ax.get_title(): ax.lines[[l.get_label() for l in ax.lines].index("naive")] for ax in axes}
    assert np.allclose(naive["task 0"].get_ydata(), [85, 55, 40]) and list(naive["task 0"].get_xdata()) == [1, 2, 3]
    assert np.allclose(naive["task 1"].get_ydata(), [90, 65])
    assert all(l.get_color() == colour(l.get_label()) for ax in axes for l in ax.lines)


# Evaluated every 2 tasks (eval_every=2): after tasks 0 and 2 only the task just trained.
SPARSE = [
    _run("naive", 0, [[0.9, None, None, None], [0.6, 0.9, None, None], [None, None, 0.95, None], [0.3, 0.5, 0.7, 0.9]]),
    _run("naive", 1, [[0.8, None, None, None], [0.4, 0.9, None, None], [None, None, 0.85, None], [0.5, 0.3, 0.5, 0.9]]),
]


def test_a_sparsely_evaluated_run_passes_the_check_and_its_metrics_use_what_was_evaluated(tmp_path):
    m = cl_metrics(SPARSE[0]["acc"])
    assert m["bwt"] == pytest.approx(((0.3 - 0.9) + (0.5 - 0.9) + (0.7 - 0.95)) / 3)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.9 - 0.5) + (0.95 - 0.7)) / 3)
    assert len(load_results(_write(tmp_path / "toy", SPARSE)).runs) == 2


def test_sparse_rows_drop_out_of_the_curves_and_leave_gaps_in_the_matrix():
    curves = average_accuracy_curves(SPARSE)["naive"]
    assert np.isnan(curves[:, 2]).all() and curves[:, 1] == pytest.approx([0.75, 0.65])
    line = plot_average_accuracy(SPARSE).axes[0].lines[0]
    assert list(line.get_xdata()) == [1, 2, 4]  # after the third task only that task was measured
    assert np.allclose(line.get_ydata(), [85, 70, 57.5])
    task0 = next(ax for ax in plot_task_curves(SPARSE).axes if ax.get_title() == "task 0").lines[0]
    assert list(task0.get_xdata()) == [1, 2, 4] and np.allclose(task0.get_ydata(), [85, 50, 40])
    assert np.isnan(accuracy_matrices(SPARSE)["naive"][:, 2, 0]).all()


def test_forgetting_bars_are_the_metrics_of_the_matrices():
    fig = plot_forgetting(RUNS)
    bwt, forgetting = fig.axes[:2]
    naive_bwt = np.mean([cl_metrics(r["acc"])["bwt"] for r in RUNS[:2]]) * 100
    assert [b.get_height() for b in bwt.patches] == pytest.approx([-1.0, naive_bwt])  # hypercl first
    assert [b.get_height() for b in forgetting.patches] == pytest.approx([1.0, -naive_bwt])
    assert [b.get_facecolor()[:3] for b in bwt.patches] == [
        pytest.approx(tuple(int(colour(k)[i : i + 2], 16) / 255 for i in (1, 3, 5))) for k in ("hypercl", "naive")
    ]


def test_plot_all_writes_every_png(tmp_path):
    paths = plot_all(RUNS, tmp_path)
    assert [p.name for p in paths] == [f"{n}.png" for n in PLOTS]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    assert set(figures(RUNS)) == set(PLOTS)


def test_committed_results_all_pass_the_schema_check():
    folders = find_results(RESULTS)
    assert {f.name for f in folders} >= {"split-mnist", "split-mnist-class", "split-mnist-domain", "split-cifar100-cpu"}
    for folder in folders:
        r = load_results(folder)
        assert set(r.summary["strategies"]) == set(r.strategies), folder


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda r: r.pop("bwt"), r"missing \['bwt'\]"),
        (lambda r: r["acc"][0].append(0.5), "square list of lists"),
        (lambda r: r["acc"][1].__setitem__(1, 1.5), r"acc\[1\]\[1\] is 1.5, expected an accuracy in \[0, 1\]"),
        (lambda r: r["acc"][0].__setitem__(2, 0.4), r"acc\[0\]\[2\] is 0.4, expected null"),
        # a row may skip earlier tasks (eval_every > 1), never the task just trained or the final row
        (lambda r: r["acc"][1].__setitem__(1, None), r"acc\[1\]\[1\] is None, expected an accuracy"),
        (lambda r: r["acc"][2].__setitem__(0, None), r"acc\[2\]\[0\] is None, expected an accuracy"),
        (lambda r: r.__setitem__("final_avg_acc", 0.99), "edited or corrupted"),
        (lambda r: r.__setitem__("benchmark", "other"), "keep each benchmark in its own folder"),
    ],
)
def test_a_malformed_run_is_named_with_what_is_wrong(tmp_path, corrupt, message):
    runs = json.loads(json.dumps(RUNS))
    corrupt(runs[1])
    folder = _write(tmp_path / "toy", runs)
    with pytest.raises(ValueError, match=message) as err:
        load_results(folder)
    assert "naive-seed1.json" in str(err.value)


def test_missing_or_broken_folders_get_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json does not exist: expected a results folder"):
        load_results(tmp_path)
    folder = _write(tmp_path / "toy")
    shutil.rmtree(folder / "runs")
    with pytest.raises(FileNotFoundError, match="holds no run JSON"):
        load_results(folder)
    (folder / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(folder)
    assert find_results(tmp_path) == [folder]
