"""The prepared GPU check (``benchmarks/gpu_check.py``) runs end to end on the CPU at toy size, reports
every step's numbers, says in one line that there is no GPU, and reports steps that fail."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_cifar

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"


def test_the_toy_check_runs_every_step_and_reports_their_numbers(mnist, tmp_path):
    out, data = tmp_path / "check", tmp_path / "data"
    data.mkdir()
    (data / "MNIST").symlink_to((mnist / "MNIST").resolve())
    write_cifar(data, "cifar100", per_class=4)  # small CIFAR-100 files: the toy cifar step reads them
    done = subprocess.run([sys.executable, str(GPU_CHECK), str(out), "--toy", "--data-root", str(data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["cuda-tests", "speed", "bench", "cifar"]
    assert report["passed"] and report["toy"] and report["machine"]["torch"] == torch.__version__
    cifar = steps["cifar"]["strategies"]
    assert set(cifar) == {"hypercl", "naive"} and all(0 <= c["final_avg_acc"] <= 1 for c in cifar.values())
    assert "## Benchmark (cifar/summary.json)" in (out / "report.md").read_text()
    for s in steps.values():
        assert (s["rc"], s["timed_out"]) == (0, False) and 0 < s["wall_s"] < s["timeout_s"]
        assert (out / s["log"]).read_text().startswith(f"$ {s['command']}")
    assert sum(s["timeout_s"] for s in steps.values()) <= report["budget_s"]

    tests = steps["cuda-tests"]["tests"]
    assert tests["passed"] == len(tests["cases"]) >= 6  # on the CPU the CUDA tests compare it with itself
    assert tests["skipped"] == tests["failure"] == tests["error"] == 0

    rows = {(r["config"], r["impl"], r["n_prev"]): r for r in steps["speed"]["rows"]}
    assert {("split-mnist", "target", 0), ("split-mnist", "hypercl", 0), ("split-mnist", "hypercl", 1),
            ("split-mnist", "runner-naive", 1), ("split-mnist", "loop-naive", 1)} <= set(rows)  # fmt: skip
    assert all(r["median_ms"] > 0 and r["steps"] >= 1 for r in rows.values())

    bench = steps["bench"]["strategies"]
    assert set(bench) == {"hypercl", "naive"}
    assert all(0 <= b["final_avg_acc"] <= 1 and b["time_per_step_ms"] > 0 for b in bench.values())

    md = (out / "report.md").read_text()
    assert md.startswith("# GPU check: PASS")
    assert "| step | result | time (s) | timeout (s) | command |" in md
    assert f"| cuda-tests | pass ({tests['passed']} tests passed) | {steps['cuda-tests']['wall_s']:.1f} |" in md
    assert f"| speed | pass | {steps['speed']['wall_s']:.1f} |" in md and "| hypercl |" in md
    assert f"| naive | {100 * bench['naive']['final_avg_acc']:.2f} |" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the check would run")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, str(GPU_CHECK), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}); nothing to check.\n"
    assert not (tmp_path / "out").exists()


def test_a_failing_stuck_or_unrunnable_step_is_reported_and_the_next_still_runs(tmp_path):
    check = runpy.run_path(str(GPU_CHECK), run_name="gpu_check")
    step, run, passed, result = check["Step"], check["run_step"], check["passed"], check["_result"]
    py = sys.executable
    failed = run(step("fails", [py, "-c", "print('boom'); raise SystemExit(3)"], 60), tmp_path)
    stuck = run(step("stuck", [py, "-c", "import time; print('waiting', flush=True); time.sleep(60)"], 2), tmp_path)
    unrun = run(step("speed", [py, "-c", "pass"], 60, problem="speed.py has no --device option"), tmp_path)
    fine = run(step("fine", [py, "-c", "print('fine')"], 60), tmp_path)

    assert (failed["rc"], failed["timed_out"]) == (3, False) and "boom" in (tmp_path / "fails.log").read_text()
    assert result(failed) == "FAIL: exit code 3"
    assert stuck["timed_out"] and 2 <= stuck["wall_s"] < 30
    log = (tmp_path / "stuck.log").read_text()
    assert "waiting" in log and "timed out after 2 s; killed" in log
    assert result(stuck) == "FAIL: timed out after 2 s"
    assert unrun["rc"] is None and result(unrun) == "FAIL: speed.py has no --device option"
    assert (fine["rc"], result(fine)) == (0, "pass") and "fine" in (tmp_path / "fine.log").read_text()
    assert [passed(s) for s in (failed, stuck, unrun, fine)] == [False, False, False, True]


def test_the_real_checks_timeouts_fit_its_budget(tmp_path):
    check = runpy.run_path(str(GPU_CHECK), run_name="gpu_check")
    steps = check["plan"](tmp_path, "cuda", toy=False, data_root="data", budget_s=480)
    assert [s.name for s in steps] == ["cuda-tests", "speed", "bench", "cifar"]
    assert sum(s.timeout_s for s in steps) + check["RESERVE_S"] <= 480
    cifar = steps[3]
    assert cifar.command[cifar.command.index("--preset") + 1] == "paper-zenke" and "--steps" not in cifar.command
    assert cifar.command[cifar.command.index("--tasks") + 1] == "2" and cifar.timeout_s >= 180
    assert "no cifar-100-python/ under the data root (data)" in cifar.problem  # "data" holds nothing here
    (tmp_path / "data" / "cifar-100-python").mkdir(parents=True)
    (tmp_path / "data" / "cifar-100-python" / "train").write_bytes(b"")
    assert check["plan"](tmp_path, "cuda", toy=False, data_root=str(tmp_path / "data"), budget_s=480)[3].problem is None
    speed, bench = steps[1].command, steps[2].command
    assert speed[speed.index("--configs") + 1] == "split-mnist,pmnist-10" and "--no-memory" in speed
    assert bench[bench.index("--device") + 1] == "cuda" and bench[bench.index("--data-root") + 1] == "data"
    assert "--steps" not in bench and steps[0].env == {"HYPERCL_TEST_DEVICE": "cuda"}
