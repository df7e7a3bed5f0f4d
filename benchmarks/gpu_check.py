"""The prepared GPU check: on one CUDA GPU, inside 8 minutes, the CUDA tests, the speed table and a
short benchmark, with a report (``report.md``, ``report.json``) in one folder.

    python benchmarks/gpu_check.py results/gpu-check --data-root ../shared/data  # make gpu-check
    python benchmarks/gpu_check.py /tmp/check --toy --data-root ../shared/data    # CPU, toy size (the tests)
    bash benchmarks/gpu_check.sh                                                  # on a lent GPU machine

Steps, each a subprocess with its own timeout (together under ``--budget-s``), its output in
``OUT_DIR/<step>.log``:

- ``cuda-tests``: ``pytest -m cuda tests/test_cuda.py`` on the device (CPU and GPU agree on
  generated weights, regulariser and training steps; a deterministic run repeats bit for bit);
- ``speed``: ``benchmarks/speed.py`` on the device, into ``OUT_DIR/speed/``;
- ``bench``: ``hypercl-bench split-mnist --preset quick`` on the device, into ``OUT_DIR/bench/``;
- ``cifar``: ``hypercl-bench split-cifar100 --preset paper-zenke --tasks 2``, all seven strategies
  one after another on the device (the paper's ZenkeNet budget: 80 epochs of batch 256 per task),
  into ``OUT_DIR/cifar/``. It needs ``cifar-100-python/`` under the data root; ``make gpu-data``
  carries the first two tasks' classes (all their images) and one image of each other class.

A step that fails or times out is reported and the others still run; the exit code is 1 if any
failed. Without a CUDA GPU (and without ``--toy``) it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed.py"
RESERVE_S = 20.0  # of the budget: this script's own start-up and reports
SHARES = {"cuda-tests": 0.15, "speed": 0.3, "bench": 0.15, "cifar": 0.4}  # of the rest of the budget
CIFAR_TASKS = 2  # of Split CIFAR-100 in the check: what the device tool can carry (see gpu_check.sh)
SPEED_IMPLS = ("target", "naive", "hypercl-loop", "hypercl", "hypercl+lookahead")


@dataclass(frozen=True)
class Step:
    """One subprocess of the check. ``problem`` says why it cannot run (it then fails unrun)."""

    name: str
    command: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None


# ------------------------------------------------------------------ the steps
def plan(out: Path, device: str, *, toy: bool, data_root: str | None, budget_s: float) -> list[Step]:
    share = {name: s * (budget_s - RESERVE_S) for name, s in SHARES.items()}
    tests = Step(
        "cuda-tests",
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider",
         f"--junitxml={out / 'cuda-tests.xml'}"],
        share["cuda-tests"],
        env={"HYPERCL_TEST_DEVICE": device},
    )  # fmt: skip
    bench = [sys.executable, "-m", "hypercl.bench", "split-mnist", "--preset", "quick", "--device", device,
             "--seeds", "1", "--out", str(out / "bench")]  # fmt: skip
    bench += ["--data-root", data_root] if data_root else []
    bench += ["--steps", "5", "--tasks", "2", "--strategies", "hypercl,naive"] if toy else []
    steps = [tests, speed_step(out, device, toy=toy, timeout_s=share["speed"]), Step("bench", bench, share["bench"])]
    return [*steps, cifar_step(out, device, toy=toy, data_root=data_root, timeout_s=share["cifar"])]


def cifar_step(out: Path, device: str, *, toy: bool, data_root: str | None, timeout_s: float) -> Step:
    """Split CIFAR-100's first tasks at the ``paper-zenke`` budget, every strategy (toy: 2 steps of
    HyperCL and Naive)."""
    command = [sys.executable, "-m", "hypercl.bench", "split-cifar100", "--preset", "paper-zenke",
               "--tasks", str(CIFAR_TASKS), "--device", device, "--out", str(out / "cifar")]  # fmt: skip
    command += ["--data-root", data_root] if data_root else []
    command += ["--steps", "2", "--strategies", "hypercl,naive"] if toy else []
    root = data_root or os.environ.get("HYPERCL_DATA_ROOT")
    problem = None
    if not root or not (Path(root) / "cifar-100-python" / "train").is_file():
        problem = (f"no cifar-100-python/ under the data root ({root or 'none given'}); "
                   "make gpu-data puts the first tasks' images in .device-data/")  # fmt: skip
    notes = [] if toy else [f"the first {CIFAR_TASKS} of Split CIFAR-100's 10 tasks: the device tool carries 64 MiB"]
    return Step("cifar", command, timeout_s, notes=notes, problem=problem)


def speed_step(out: Path, device: str, *, toy: bool, timeout_s: float) -> Step:
    """``benchmarks/speed.py`` on ``device``: bare steps, the runner against plain loops, and the
    regulariser's two forms (toy sizes with ``toy``)."""
    if toy:
        sizes = ["--configs", "split-mnist", "--prev", "0,1", "--impls", "target,hypercl", "--warmup", "1",
                 "--rounds", "1", "--min-time", "0.05", "--pairs", "naive", "--pair-block", "2", "--pair-rounds", "1"]  # fmt: skip
    else:
        impls = [*SPEED_IMPLS, *(["hypnettorch"] if importlib.util.find_spec("hypnettorch") else [])]
        sizes = ["--configs", "split-mnist,pmnist-10", "--prev", "0,9,99", "--impls", ",".join(impls),
                 "--pairs", "hypercl,naive,ewc,lwf,replay", "--pair-rounds", "4", "--forms"]  # fmt: skip
    command = [sys.executable, str(SPEED), "--device", device, *sizes, "--no-memory", "--out", str(out / "speed")]
    return Step("speed", command, timeout_s)


def run_step(step: Step, out: Path) -> dict:
    """Run ``step`` with its output in ``out/<name>.log``; its command, return code, wall time."""
    record = {"name": step.name, "command": shlex.join(step.command), "timeout_s": round(step.timeout_s, 1),
              "log": f"{step.name}.log", "notes": step.notes}  # fmt: skip
    log = out / record["log"]
    if step.problem:
        log.write_text(f"gpu_check: not run: {step.problem}\n")
        return {**record, "rc": None, "timed_out": False, "wall_s": 0.0, "problem": step.problem}
    env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {record['command']}\n")
        f.flush()
        # Its own process group, so a timeout ends whatever the step started too.
        proc = subprocess.Popen(step.command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        timed_out = False
        try:
            proc.wait(timeout=step.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:  # timed out, or this script was interrupted
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.perf_counter() - start
        if timed_out:
            f.write(f"\ngpu_check: timed out after {step.timeout_s:.0f} s; killed\n")
    return {**record, "rc": proc.returncode, "timed_out": timed_out, "wall_s": round(wall, 2)}


# ------------------------------------------------------------------ what each step measured
def read_tests(out: Path) -> dict:
    path = out / "cuda-tests.xml"
    if not path.is_file():
        return {"problem": f"pytest wrote no {path.name}"}
    try:
        cases = ET.parse(path).getroot().iter("testcase")
    except ET.ParseError as err:
        return {"problem": f"unreadable {path.name}: {err}"}
    rows = []
    for case in cases:
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        rows.append({"name": case.get("name"), "outcome": outcome, "time_s": float(case.get("time", 0))})
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failure", "error", "skipped")}
    result = {"tests": {**counts, "cases": rows}}
    if counts["skipped"] or not counts["passed"]:  # a GPU check whose GPU tests skipped checked nothing
        result["problem"] = f"{counts['passed']} passed, {counts['skipped']} skipped"
    return result


def read_speed(out: Path) -> dict:
    report = _load(out / "speed" / "speed.json")
    if report is None:
        return {"problem": "speed.py wrote no speed.json"}
    if "problem" in report or not report.get("rows"):
        return {"problem": report.get("problem", "speed.json has no rows")}
    return {"rows": report["rows"], "ratios": report.get("ratios", {}), "speed_machine": report.get("machine")}


def read_bench(out: Path, folder: str = "bench") -> dict:
    summary = _load(out / folder / "summary.json")
    if summary is None:
        return {"problem": "hypercl-bench wrote no summary.json"}
    if "problem" in summary:
        return summary
    strategies = {
        name: {"final_avg_acc": s["final_avg_acc"]["mean"], "time_per_step_ms": s["time_per_step_ms"]["mean"]}
        for name, s in summary.get("strategies", {}).items()
    }
    return {"strategies": strategies} if strategies else {"problem": "summary.json has no strategies"}


READERS = {"cuda-tests": read_tests, "speed": read_speed, "bench": read_bench, "cifar": lambda out: read_bench(out, "cifar")}
OUTPUTS = {"cuda-tests": "cuda-tests.xml", "speed": "speed", "bench": "bench", "cifar": "cifar"}  # made afresh by each run


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        return {"problem": f"unreadable {path.name}: {err}"}


def passed(step: dict) -> bool:
    return step["rc"] == 0 and not step["timed_out"] and not step.get("problem")


# ------------------------------------------------------------------ the machine and the report
def machine(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}  # fmt: skip
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": torch.cuda.get_device_name(device), "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "compute_capability": f"{props.major}.{props.minor}"}  # fmt: skip
    info["driver"] = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    commit = _output(["git", "rev-parse", "HEAD"])
    if commit and _output(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    info["commit"] = commit
    return info


def _output(command: list[str]) -> str | None:
    """A command's first line of output, or ``None`` where it is missing or fails."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return next(iter(done.stdout.splitlines()), "").strip() or None


def markdown(report: dict, out: Path) -> str:
    m, steps = report["machine"], report["steps"]
    where = m.get("gpu") or f"CPU ({m['device']})"
    lines = [f"# GPU check: {'PASS' if report['passed'] else 'FAIL'}, {where}", "",
             f"`{report['command']}`, {report['started_utc']}; {report['wall_s']:.0f} s of a "
             f"{report['budget_s']:.0f} s budget{' (toy size)' if report['toy'] else ''}.", "",
             f"torch {m['torch']} (CUDA {m['cuda']}), driver {m['driver'] or 'n/a'}, Python {m['python']}, "
             f"{m['cpus']} CPUs, {m['platform']}; commit {m['commit'] or 'n/a'}.", "",
             "| step | result | time (s) | timeout (s) | command |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {s['name']} | {_result(s)} | {s['wall_s']:.1f} | {s['timeout_s']:.0f} | `{s['command']}` |"
              for s in steps]  # fmt: skip
    lines += [f"- {s['name']}: {n}" for s in steps for n in s["notes"]]
    for s in steps:
        if s["name"] == "cuda-tests" and "tests" in s:
            lines += ["", "## CUDA tests", "", "| test | outcome | time (s) |", "|---|---|---|"]
            lines += [f"| {c['name']} | {c['outcome']} | {c['time_s']:.2f} |" for c in s["tests"]["cases"]]
        if s["name"] == "speed" and (out / "speed" / "speed.md").is_file():
            table = (out / "speed" / "speed.md").read_text()
            lines += ["", "## Speed (speed/speed.md)", "", re.sub(r"^#", "###", table, flags=re.M).rstrip()]
        if s["name"] in ("bench", "cifar") and "strategies" in s:
            lines += ["", f"## Benchmark ({s['name']}/summary.json)", "", "| strategy | final acc % | ms/step |",
                      "|---|---|---|"]  # fmt: skip
            lines += [f"| {name} | {100 * r['final_avg_acc']:.2f} | {r['time_per_step_ms']:.1f} |"
                      for name, r in s["strategies"].items()]  # fmt: skip
    for s in steps:
        if not passed(s):
            tail = (out / s["log"]).read_text(errors="replace").splitlines()[-30:]
            lines += ["", f"## {s['name']}: the end of {s['log']}", "", "```", *tail, "```"]
    return "\n".join(lines) + "\n"


def _result(step: dict) -> str:
    tests = step.get("tests")
    counts = f" ({tests['passed']} tests passed)" if tests else ""
    if passed(step):
        return "pass" + counts
    if step["timed_out"]:
        return f"FAIL: timed out after {step['timeout_s']:.0f} s"
    if step["rc"] not in (0, None):
        return f"FAIL: exit code {step['rc']}" + counts
    return f"FAIL: {step['problem']}"


# ------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, metavar="OUT_DIR", help="folder for report.md, report.json, logs and outputs")
    p.add_argument("--toy", action="store_true", help="toy sizes, on the CPU unless --device says otherwise")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --toy)")
    p.add_argument("--data-root", default=None, help="folder holding MNIST/raw/... (default: $HYPERCL_DATA_ROOT)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="seconds for all steps together; each step's timeout is its share")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    device = args.device or ("cpu" if args.toy else "cuda")
    if args.budget_s < RESERVE_S + 30:
        parser().error(f"--budget-s must be at least {RESERVE_S + 30:.0f}, got {args.budget_s:g}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}); nothing to check.")
        return 0
    # Imports Avalanche: seconds that the one line above need not wait for.
    from hypercl.bench.results import atomic_write, write_json

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {"command": shlex.join(["python", "benchmarks/gpu_check.py", *argv]), "toy": args.toy,
              "budget_s": args.budget_s, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(device), "steps": []}  # fmt: skip
    for step in plan(out, device, toy=args.toy, data_root=args.data_root, budget_s=args.budget_s):
        made = out / OUTPUTS[step.name]  # never report a stale output of an earlier check
        if made.is_dir():
            shutil.rmtree(made)
        made.unlink(missing_ok=True)
        print(f"gpu_check: {step.name} (timeout {step.timeout_s:.0f} s)", file=sys.stderr, flush=True)
        record = run_step(step, out)
        record |= READERS[step.name](out) if not step.problem else {}
        report["steps"].append(record)
        report["wall_s"] = round(time.perf_counter() - start, 1)
        report["passed"] = all(passed(s) for s in report["steps"])
        write_json(out / "report.json", report)  # after every step: a check cut short still reports
        atomic_write(out / "report.md", markdown(report, out))
        print(f"gpu_check: {step.name}: {_result(record)}, {record['wall_s']:.1f} s", file=sys.stderr, flush=True)
    print(f"gpu_check: {'PASS' if report['passed'] else 'FAIL'} in {report['wall_s']:.0f} s; {out / 'report.md'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
