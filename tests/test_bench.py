"""The benchmark runner end to end on a tiny budget, its results files, resume and data errors."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hypercl import HyperNetConfig
from hypercl.bench.cli import _matches, main
from hypercl.bench.presets import preset
from hypercl.bench.results import RUN_KEYS, cl_metrics



def test_cl_metrics_of_a_known_matrix():
    acc = [[0.9, None, None], [0.8, 0.95, None], [0.7, 0.85, 1.0]]
    m = cl_metrics(acc)
    assert m["final_avg_acc"] == pytest.approx((0.7 + 0.85 + 1.0) / 3)
    assert m["bwt"] == pytest.approx(((0.7 - 0.9) + (0.85 - 0.95)) / 2)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.7) + (0.95 - 0.85)) / 2)


def test_runner_writes_every_result_file_and_resumes(mnist, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["split-mnist", "--strategies", "hypercl,naive,ewc", "--seeds", "2", "--steps", "3",
            "--tasks", "2", "--data-root", str(mnist), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("hypercl", "naive", "ewc"))

    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert runs == [f"{s}-seed{k}.json" for s in ("ewc", "hypercl", "naive") for k in (0, 1)]
    record = json.loads((out / "runs" / "hypercl-seed1.json").read_text())
    assert set(RUN_KEYS) <= set(record)
    assert record["seed"] == 1 and record["scenario"] == "task"
    assert len(record["acc"]) == 2 and record["acc"][0][1] is None
    assert all(0 <= a <= 1 for row in record["acc"] for a in row if a is not None)
    assert record["config"]["steps_per_task"] == 3 and record["config"]["compression_ratio"] > 0
    assert record["final_avg_acc"] == pytest.approx(sum(record["acc"][1]) / 2)
    assert record["time_per_step_ms"] > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "split-mnist" and summary["scenario"] == "task"
    assert summary["seeds"] == [0, 1] and "hypercl-bench split-mnist" in summary["command"]
    assert list(summary["strategies"]) == ["hypercl", "naive", "ewc"]  # command-line names, CLI order
    stat = summary["strategies"]["naive"]["final_avg_acc"]
    assert set(stat) == {"mean", "std", "per_seed"} and len(stat["per_seed"]) == 2
    assert "bwt" in summary["strategies"]["ewc"]
    assert "| hypercl |" in (out / "summary.md").read_text()
    for png in ("average_accuracy.png", "task_curves.png", "accuracy_matrices.png", "forgetting.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # a second run skips what finished; --force redoes it
    stamp = (out / "runs" / "naive-seed0.json").stat().st_mtime_ns
    first = {s: json.loads((out / "runs" / f"{s}-seed0.json").read_text()) for s in ("hypercl", "naive")}
    assert main(argv) == 0
    assert "naive seed 0" not in capsys.readouterr().err
    assert (out / "runs" / "naive-seed0.json").stat().st_mtime_ns == stamp
    assert main([*argv[:2], "hypercl,naive", *argv[3:], "--seeds", "1", "--force"]) == 0
    assert "naive seed 0" in capsys.readouterr().err
    assert (out / "runs" / "naive-seed0.json").stat().st_mtime_ns != stamp
    # the same seed and command give the same results, timings apart
    timing = {"train_time_s", "time_per_step_ms", "finished_at", "command"}
    for name, before in first.items():
        again = json.loads((out / "runs" / f"{name}-seed0.json").read_text())
        assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in before.items() if k not in timing}
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_eval_every_evaluates_earlier_tasks_only_at_its_tasks_and_the_last(mnist, tmp_path, capsys):
    out = tmp_path / "sparse"
    argv = ["split-mnist", "--strategies", "naive", "--steps", "2", "--tasks", "4", "--eval-every", "3",
            "--data-root", str(mnist), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "runs" / "naive-seed0.json").read_text())
    acc = record["acc"]
    assert acc[1][0] is None and acc[1][1] is not None  # after task 1: only task 1
    assert None not in acc[2][:3] and None not in acc[3]  # after task 2 (the 3rd) and the last: all
    assert record["config"]["preset_settings"]["eval_every"] == 3
    assert record["forgetting"] == pytest.approx(cl_metrics(acc)["forgetting"])
    curve = json.loads((out / "summary.json").read_text())["strategies"]["naive"]["avg_acc_curve"]
    assert curve[1] is None and curve[3] == pytest.approx(record["final_avg_acc"])
    # the full evaluation is another setting: the run does not count for it
    full = [a for i, a in enumerate(argv) if "--eval-every" not in argv[max(i - 1, 0) : i + 1]]
    assert main(full) == 2 and "other settings (eval_every differ)" in capsys.readouterr().err
    assert main([*full, "--force"]) == 0
    assert None not in json.loads((out / "runs" / "naive-seed0.json").read_text())["acc"][1][:2]


def test_permuted_mnist_runs_padded_to_32x32(mnist, tmp_path):
    out = tmp_path / "pm"
    argv = ["pmnist-10", "--strategies", "hypercl,naive", "--steps", "2", "--tasks", "2",
            "--data-root", str(mnist), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "runs" / "hypercl-seed0.json").read_text())
    assert record["benchmark"] == "pmnist-10" and len(record["acc"]) == 2
    assert record["config"]["preset_settings"]["hidden"] == [1000, 1000]
    # 1024 inputs (28x28 padded by 2) into the first of two 1000-unit layers, 10 outputs
    n_target = 1024 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10
    n_hnet = record["config"]["compression_ratio"] * n_target
    assert 0.9 * n_target < n_hnet < 1.1 * n_target  # the paper's compressive regime


def test_pmnist_paper_preset_is_the_papers_and_tuned_changes_only_hypercls_beta():
    paper, tuned = preset("pmnist-10", "paper"), preset("pmnist-10", "tuned")
    assert (paper.hidden, paper.steps, paper.batch_size, paper.lr, paper.beta) == ((1000, 1000), 5000, 128, 1e-4, 0.1)
    assert (paper.hnet.hidden, paper.hnet.activation, paper.hnet.chunk_size) == ((25, 25), nn.ELU, 78000)
    assert (paper.hnet.task_emb_dim, paper.hnet.chunk_emb_dim, paper.hnet.init) == (24, 8, "xavier")
    changed = {k: (v, tuned.to_dict()[k]) for k, v in paper.to_dict().items() if tuned.to_dict()[k] != v}
    assert changed == {"beta": (0.1, 0.01)}  # chosen on the validation split, the baselines untouched


def test_pmnist100_paper_preset_is_the_papers_and_quick_is_its_stated_cpu_budget():
    paper, quick = preset("pmnist-100", "paper"), preset("pmnist-100", "quick")
    assert (paper.hidden, paper.steps, paper.lr, paper.beta, paper.reg_tasks) == ((1000, 1000), 5000, 1e-4, 0.01, None)
    assert (paper.hnet.hidden, paper.hnet.activation, paper.hnet.chunk_size) == ((200, 250, 350), nn.ReLU, 7500)
    assert (paper.hnet.task_emb_dim, paper.hnet.chunk_emb_dim, paper.eval_every) == (128, 12, 1)
    changed = {k: (v, quick.to_dict()[k]) for k, v in paper.to_dict().items() if quick.to_dict()[k] != v}
    assert changed == {"steps": (5000, 250), "lr": (1e-4, 1e-3), "reg_tasks": (None, 2), "eval_every": (1, 10)}


def test_a_stored_run_counts_only_while_its_own_settings_match():
    settings = preset("split-mnist", "paper").to_dict()
    budget = {"preset": "paper", "n_tasks": 5, "settings": settings}
    stronger_ewc = {**settings, "ewc_lambda": 2 * settings["ewc_lambda"]}
    wider_hnet = {**settings, "hnet": {**settings["hnet"], "hidden": [20, 20]}}

    def record(strategy, preset_settings):
        return {"strategy": strategy, "preset": "paper", "config": {"n_tasks": 5, "preset_settings": preset_settings}}

    assert _matches(record("ewc", settings), budget)
    assert not _matches(record("ewc", stronger_ewc), budget)
    assert _matches(record("hypercl", stronger_ewc), budget)  # EWC's strength is not HyperCL's concern
    assert not _matches(record("hypercl", wider_hnet), budget)
    assert _matches(record("naive", wider_hnet), budget)
    assert not _matches(record("naive", settings), {**budget, "n_tasks": 2})
    assert not _matches(record("naive", settings), {**budget, "scenario": "class"})
    # HyperCL's task-inference method matters only where tasks are inferred
    other_inference = {**settings, "inference": "entropy"}
    assert _matches(record("hypercl", other_inference), budget)
    class_budget = {**budget, "scenario": "class"}
    assert not _matches({**record("hypercl", other_inference), "scenario": "class"}, class_budget)
    assert _matches({**record("hypercl", settings), "scenario": "class"}, class_budget)


@pytest.mark.parametrize(("scenario", "labels", "task_label"), [
    ("task", [0, 1], 1), ("domain", [0, 1], 0), ("class", [2, 3], 0),
])  # fmt: skip
def test_scenarios_relabel_split_mnist(mnist, scenario, labels, task_label):
    from hypercl.bench.datasets import build

    bm = build("split-mnist", mnist, 0, scenario=scenario, n_tasks=2)
    exp = bm.test_stream[1]  # digits 2 and 3
    assert sorted(exp.classes_in_this_experience) == labels
    assert exp.task_label == task_label


def test_class_scenario_run_records_task_inference_per_method(mnist, tmp_path):
    out = tmp_path / "cl3"
    argv = ["split-mnist", "--scenario", "class", "--strategies", "hypercl,naive", "--steps", "20",
            "--tasks", "2", "--data-root", str(mnist), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "runs" / "hypercl-seed0.json").read_text())
    assert record["scenario"] == "class" and record["config"]["inference"][0] == "mahalanobis"
    assert record["task_inference_acc"][0] == [1.0, None]  # one task learned: nothing to confuse
    assert 0.5 < record["final_avg_task_inference_acc"] <= 1.0
    methods = record["inference_methods"]
    assert set(methods) == {"mahalanobis", "mahalanobis-hidden", "entropy", "oneshot"}
    # the first method decides the outputs Avalanche's metrics saw
    assert methods["mahalanobis"]["acc"] == pytest.approx(record["acc"][-1])
    assert methods["mahalanobis"]["task_inference_acc"] == pytest.approx(record["task_inference_acc"][-1])
    for m in methods.values():  # right class needs the right task (and both digits are new classes)
        assert all(a <= t + 1e-9 for a, t in zip(m["acc"], m["task_inference_acc"]))
    naive = json.loads((out / "runs" / "naive-seed0.json").read_text())
    assert "task_inference_acc" not in naive and naive["acc"][1][0] < 0.2  # one head: task 1 overwrites digits 0/1
    assert "task inference by method" in (out / "summary.md").read_text()


@pytest.mark.parametrize("present", [[], ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]])
def test_missing_or_incomplete_data_root_is_one_clear_message(tmp_path, capsys, present):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in present:
        (raw / name).write_bytes(b"")
    code = main(["split-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "t10k-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err
    assert "MNIST(root=" in err  # how to get them
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["split-mnist", "--strategies", "hypercl,gem"], "unknown strategies ['gem']"),
        (["split-mnist", "--preset", "huge"], "No preset 'huge' for split-mnist"),
        (["split-mnist", "--seeds", "0"], "--seeds must be at least 1"),
        (["cifar-1000"], "invalid choice: 'cifar-1000'"),
        (["pmnist-100", "--scenario", "class"], "use pmnist-10 for the domain and class scenarios"),
        (["split-mnist", "--scenario", "classes"], "invalid choice: 'classes'"),
        (["split-mnist", "--checkpoint-every", "0"], "--checkpoint-every must be at least 1, got 0"),
        (["split-mnist", "--resume", "--force"], "--force starts unfinished runs over and --resume continues them"),
    ],
)
def test_bad_options_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_synaptic_intelligence_really_regularises_on_cpu():
    """Avalanche 0.6's SI aliases the live weights on CPU; the runner's SI must not."""
    from dataclasses import replace

    import torch
    from avalanche.training.plugins import EvaluationPlugin
    from helpers import conflicting_stream

    from hypercl import StepBudget
    from hypercl.bench.datasets import BenchmarkInfo
    from hypercl.bench.presets import preset
    from hypercl.bench.strategies import make_strategy

    info = BenchmarkInfo("toy", "task", 2, 16, 4)
    settings = replace(preset("split-mnist", "quick"), hidden=(32, 32), si_lambda=1e3)
    strategy = make_strategy("si", info, settings, train_mb_size=32,
                             evaluator=EvaluationPlugin(loggers=[]), plugins=[StepBudget(20)])  # fmt: skip
    strategy.train(conflicting_stream(n_tasks=2).train_stream[0])
    si = next(p for p in strategy.plugins if type(p).__name__ == "SynapticIntelligencePlugin")
    importance = torch.cat([d.data for d in si.ewc_data[1].values()])
    assert importance.abs().sum() > 0
    anchor = si.ewc_data[0]["body.net.1.weight"].data
    live = strategy.model.body.net[1].weight.flatten()
    assert anchor.data_ptr() != live.data_ptr()


def test_speed_benchmark_times_every_setting_and_writes_its_ratios(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed", Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "speed", speed)  # dataclasses look their module up there
    spec.loader.exec_module(speed)
    speed.CONFIGS["tiny"] = speed.Config(20, (16,), 3, HyperNetConfig(hidden=(8,), chunk_size=64, task_emb_dim=4,
                                                                      chunk_emb_dim=4), 0.01, 1e-3)  # fmt: skip
    args = ["--configs", "tiny", "--impls", "target,naive,hypercl-loop,hypercl-loop-stored,hypercl", "--prev", "0,3",
            "--k", "2", "--warmup", "2", "--rounds", "2", "--min-time", "0.02", "--no-memory", "--out", str(tmp_path),
            "--pairs", ""]  # fmt: skip
    try:
        assert speed.main(args) == 0
        forms = speed.regularizer_forms(["tiny"], ks=(1, 3), reps=2)
        # The runner against the plain loop, side by side in one experience, at Split MNIST's sizes.
        assert speed.main(["--configs", "split-mnist", "--impls", "target", "--prev", "0", "--warmup", "1",
                           "--rounds", "1", "--min-time", "0.01", "--no-memory", "--pairs", "naive,hypercl",
                           "--pair-block", "2", "--pair-rounds", "2", "--out", str(tmp_path / "pairs")]) == 0  # fmt: skip
    finally:
        torch.set_flush_denormal(False)
    assert [f["k"] for f in forms] == [1, 3] and all(f["direct_ms"] > 0 and f["factored_ms"] > 0 for f in forms)
    pairs = json.loads((tmp_path / "pairs" / "speed.json").read_text())
    steps = {r["impl"]: r["steps"] for r in pairs["rows"]}
    assert steps["runner-naive"] >= 2 and steps["loop-naive"] == 4 and steps["loop-hypercl"] == 4
    assert pairs["pairs"]["split-mnist"]["naive"] == pytest.approx(
        {r["impl"]: r["median_ms"] for r in pairs["rows"]}["runner-naive"]
        / {r["impl"]: r["median_ms"] for r in pairs["rows"]}["loop-naive"])
    assert "| split-mnist | hypercl |" in (tmp_path / "pairs" / "speed.md").read_text()
    report = json.loads((tmp_path / "speed.json").read_text())
    got = {(r["impl"], r["n_prev"], r["subset"]) for r in report["rows"]}
    assert got == {("target", 0, False), ("naive", 0, False)} | {
        (i, n, s) for i in ("hypercl-loop", "hypercl-loop-stored", "hypercl") for n, s in ((0, False), (3, False), (3, True))
    }
    assert all(r["median_ms"] > 0 and r["steps"] >= 2 for r in report["rows"])
    ratios = report["ratios"]["tiny"]
    rows = {(r["impl"], r["n_prev"], r["subset"]): r["median_ms"] for r in report["rows"]}
    assert ratios["hypercl / naive, 0 earlier"] == pytest.approx(rows["hypercl", 0, False] / rows["naive", 0, False])
    assert "| hypercl-loop-stored |" in (tmp_path / "speed.md").read_text()


def _idx(path: Path, shape: tuple[int, ...], size: int | None = None, head: bytes | None = None) -> None:
    """An IDX file of unsigned bytes with ``shape`` (sparse: no data written), or ``size`` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = head if head is not None else bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(size if size is not None else len(header) + math.prod(shape))


MNIST_SHAPES = {"train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,),
                "t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,)}  # fmt: skip


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"size": 0}, "train-labels-idx1-ubyte is empty. Replace it with the original (gunzipped) MNIST file."),
        ({"size": 1000}, "train-labels-idx1-ubyte is truncated or padded: 1000 bytes, expected 60008."),
        ({"head": b"\x1f\x8b\x08\x00\x00\x00\x00\x00"}, "train-labels-idx1-ubyte is gzip-compressed: gunzip it"),
        ({"head": b"\x00\x00\x08\x03" + b"\x00" * 12}, "is not an IDX file of 1-d unsigned bytes (its header starts 00000803"),
        ({"shape": (50000,)}, "holds data of shape (50000,); MNIST's train-labels-idx1-ubyte is (60000,). The data "
                              "root points at another data set"),
    ],
)  # fmt: skip
def test_broken_mnist_files_are_one_clear_message_before_anything_runs(tmp_path, capsys, broken, message):
    raw = tmp_path / "MNIST" / "raw"
    for name, shape in MNIST_SHAPES.items():
        if name == "train-labels-idx1-ubyte":
            _idx(raw / name, broken.get("shape", shape), broken.get("size"), broken.get("head"))
        else:
            _idx(raw / name, shape)
    code = main(["split-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("layout", "hint"),
    [
        ("MNIST/raw", "itself holds the IDX files: the root is the folder two levels up"),
        ("MNIST", "looks like the MNIST folder: the root is its parent"),
        ("cifar", "holds cifar-100-python but no MNIST: is it the right root?"),
    ],
)
def test_a_data_root_at_the_wrong_level_or_data_set_says_so(tmp_path, capsys, layout, hint):
    for name, shape in MNIST_SHAPES.items():
        _idx(tmp_path / "MNIST" / "raw" / name, shape)
    (tmp_path / "other" / "cifar-100-python").mkdir(parents=True)
    root = {"MNIST/raw": tmp_path / "MNIST" / "raw", "MNIST": tmp_path / "MNIST", "cifar": tmp_path / "other"}[layout]
    assert main(["split-mnist", "--data-root", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "MNIST is incomplete under" in err and hint in err
