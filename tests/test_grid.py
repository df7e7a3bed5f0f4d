"""Many runs at once on Ray: real concurrency, resources, retries after a killed worker,
results equal to the one-at-a-time path, and no Ray process left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hypercl.bench.cli import main
from hypercl.bench.grid import INSTALL_RAY, GridError, Resources, run_grid, sigterm_as_interrupt

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
# Ray's workers cannot import this test module: its functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMING = {"train_time_s", "time_per_step_ms", "finished_at", "command", "machine"}


class Calls:
    """What ``run_grid`` reported, by key."""

    def __init__(self) -> None:
        self.started, self.results, self.failures = {}, {}, {}

    def kwargs(self) -> dict:
        return {
            "on_start": lambda k, info: self.started.setdefault(k, []).append(info),
            "on_result": self.results.__setitem__,
            "on_failure": self.failures.__setitem__,
            "progress": False,
        }


def _meet(job, notify):
    """Write my marker, then wait for the other run's: only completes if both run at once."""
    mine, other, patience = job
    notify({})
    Path(mine).write_text(str(os.getpid()))
    deadline = time.monotonic() + patience
    while not Path(other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never appeared")
        time.sleep(0.02)
    return os.getpid()


def test_two_runs_that_wait_for_each_other_complete_with_two_workers(ray_cluster, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    jobs = {"a": (str(a), str(b), 60), "b": (str(b), str(a), 60)}
    calls = Calls()
    run_grid(_meet, jobs, Resources(workers=2), log_dir=tmp_path / "logs", **calls.kwargs())
    assert calls.failures == {}
    assert set(calls.results) == {"a", "b"} and calls.results["a"] != calls.results["b"]  # two processes
    assert calls.results["a"] != os.getpid()
    assert {k: [i["attempt"] for i in v] for k, v in calls.started.items()} == {"a": [1], "b": [1]}
    assert (tmp_path / "logs" / "a.log").read_text().startswith("== worker pid ")

    # One after another (one worker, in this process) the first run waits in vain: it fails, is
    # reported, and the second still runs (its partner's marker is there by then).
    for p in (a, b):
        p.unlink()
    calls = Calls()
    run_grid(_meet, {"a": (str(a), str(b), 0.5), "b": (str(b), str(a), 0.5)}, Resources(), **calls.kwargs())
    assert calls.failures == {"a": f"TimeoutError: {b} never appeared"}
    assert calls.results == {"b": os.getpid()}


def _span(job, notify):
    """Hold a CPU for a while; return when."""
    started = time.time()
    time.sleep(job)
    return started, time.time()


def test_never_more_runs_at_once_than_cpus_allow(ray_cluster):
    calls = Calls()
    run_grid(_span, dict.fromkeys(range(3), 1.0), Resources(workers=4, cpus_per_run=1), **calls.kwargs())
    spans = list(calls.results.values())
    assert len(spans) == 3
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap == 2  # 2 CPUs in the cluster, 1 per run: 2 at once, not 4

    with pytest.raises(GridError, match=r"--cpus-per-run 3 is more than the Ray cluster has \(2 CPUs in all\)"):
        run_grid(_span, {0: 0.0}, Resources(workers=2, cpus_per_run=3), **calls.kwargs())


def _broken(job, notify):
    if job == "bad":
        raise FloatingPointError("loss is NaN at step 7")
    return job


def test_an_exception_in_a_run_is_reported_once_and_the_others_go_on(ray_cluster, tmp_path):
    calls = Calls()
    jobs = {"bad": "bad", "good": "good"}
    run_grid(_broken, jobs, Resources(workers=2, retries=3), log_dir=tmp_path, **calls.kwargs())
    assert calls.results == {"good": "good"}
    assert calls.failures == {"bad": "FloatingPointError: loss is NaN at step 7"}
    log = (tmp_path / "bad.log").read_text()
    assert log.count("== worker pid") == 1  # not retried
    assert "FloatingPointError: loss is NaN at step 7" in log  # its traceback is in its log


# ------------------------------------------------------------------------- the real runner
def _args(mnist, out, *extra):
    return ["split-mnist", "--steps", "100", "--tasks", "2", "--checkpoint-every", "10",
            "--data-root", str(mnist), "--out", str(out), *extra]  # fmt: skip


def _records(out: Path) -> dict:
    return {
        p.stem: {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING}
        for p in sorted((out / "runs").glob("*.json"))
    }


@pytest.fixture(scope="module")
def one_at_a_time(mnist, tmp_path_factory):
    """HyperCL and Naive, one after another in this process on one thread."""
    out = tmp_path_factory.mktemp("seq")
    assert main(_args(mnist, out, "--strategies", "hypercl,naive", "--threads", "1")) == 0
    return _records(out)


def test_workers_give_one_at_a_time_results_also_when_a_worker_is_killed_mid_run(
    ray_cluster, mnist, tmp_path, one_at_a_time, capsys
):
    """Two runs at once; HyperCL's worker is killed with SIGKILL mid-task: it is retried, resumes
    from its checkpoint, and both records equal those of one run at a time in one process."""
    log = tmp_path / "logs" / "hypercl-0.log"
    done = []
    args = _args(mnist, tmp_path, "--strategies", "hypercl,naive", "--workers", "2")
    runner = threading.Thread(target=lambda: done.append(main(args)))
    runner.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "checkpoint hypercl seed 0: step 30 of task 1" in text:
            killed = int(text.split("== worker pid ")[1].split()[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    runner.join(timeout=300)
    assert killed is not None and done == [0]
    text = log.read_text()
    assert text.count("== worker pid") == 2 and "attempt 2" in text
    err = capsys.readouterr().err
    assert "split-mnist task [quick] hypercl seed 0 (attempt 2)" in err and "naive seed 0: final" in err
    assert f"resuming from {tmp_path.resolve() / 'checkpoints' / 'hypercl-seed0.pt'} (step " in err
    got = _records(tmp_path)
    assert got.keys() == {"hypercl-seed0", "naive-seed0"}
    assert got == one_at_a_time
    assert got["hypercl-seed0"]["final_avg_acc"] > 0.9
    # Each run's output is in its log, not in the terminal.
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {"hypercl-0.log", "naive-0.log"}
    assert "checkpoint hypercl" not in err


def test_a_finished_run_is_never_replaced_without_force(mnist, tmp_path, capsys):
    args = ["split-mnist", "--strategies", "naive", "--tasks", "2", "--data-root", str(mnist), "--out", str(tmp_path)]
    assert main([*args, "--steps", "5"]) == 0
    before = (tmp_path / "runs" / "naive-seed0.json").read_bytes()
    capsys.readouterr()
    assert main([*args, "--steps", "7", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "naive-seed0.json holds a finished run of naive seed 0 with other settings (steps differ)" in err
    assert "--steps 5" in err and "Write to another --out to keep both, or pass --force to replace it" in err
    assert (tmp_path / "runs" / "naive-seed0.json").read_bytes() == before
    assert main([*args, "--steps", "7", "--force"]) == 0
    assert json.loads((tmp_path / "runs" / "naive-seed0.json").read_text())["config"]["train_steps"] == 2 * 7


@pytest.mark.parametrize("ray_flags", [[], ["--workers", "2"]])
def test_an_out_that_cannot_be_written_is_one_error_before_training(mnist, tmp_path, capsys, ray_flags):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "results"
    assert main(["split-mnist", "--data-root", str(mnist), "--out", str(out), *ray_flags]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"hypercl-bench: cannot write results into --out {out} (Not a directory): pass --out a folder you can write"


def test_cluster_and_resource_flags_are_checked_before_training(mnist, tmp_path, capsys, monkeypatch):
    base = ["split-mnist", "--data-root", str(mnist), "--out", str(tmp_path)]
    started = time.monotonic()
    assert main([*base, "--address", "127.0.0.1:1"]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "No Ray cluster answers at --address 127.0.0.1:1" in err and "ray start --head" in err
    assert not (tmp_path / "runs").exists()

    with pytest.raises(SystemExit):
        main([*base, "--cpus-per-run", "2"])
    assert "--cpus-per-run sets what each run holds on Ray: pass --workers N" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main([*base, "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip() == f"hypercl-bench: {INSTALL_RAY}"


# ---------------------------------------------------------------- no Ray process outlives it
def _ray_processes(tmp: str, root: int) -> dict[int, float]:
    """The processes of this Ray instance: the command's descendants and whatever names its folder."""
    found = {}
    try:
        for p in psutil.Process(root).children(recursive=True):
            found[p.pid] = p.create_time()
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline", "create_time"]):
        if any(tmp in part for part in p.info["cmdline"] or ()):
            found[p.pid] = p.info["create_time"]
    return found


def _alive(procs: dict[int, float]) -> list[int]:
    alive = []
    for pid, created in procs.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_ctrl_c_cancels_the_runs_and_no_ray_process_outlives_the_command(mnist, tmp_path):
    tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "hypercl.bench", "split-mnist", "--strategies", "naive,lwf", "--workers", "2",
           "--steps", "100000", "--tasks", "1", "--data-root", str(mnist), "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}
    logs = [tmp_path / "logs" / f"{s}-0.log" for s in ("naive", "lwf")]
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(_ray_processes(tmp, proc.pid))
            if all(p.exists() and "== worker pid" in p.read_text() for p in logs):  # both runs are training
                seen.update(_ray_processes(tmp, proc.pid))
                proc.send_signal(signal.SIGINT)  # as Ctrl-C would, to the command alone
                break
            time.sleep(0.1)
        _, err = proc.communicate(timeout=120)
        assert len(seen) > 3, seen  # Ray's own daemons and the two workers were there
        assert proc.returncode == 130, err
        assert f"interrupted; finished runs are in {tmp_path / 'runs'}" in err
        deadline = time.monotonic() + 10
        while _alive(seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(seen) == [], [psutil.Process(p).cmdline() for p in _alive(seen)]
    finally:  # whatever failed above, no process of this test outlives it
        seen.update(_ray_processes(tmp, proc.pid))
        for pid in [*([proc.pid] if proc.poll() is None else []), *_alive(seen)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_one_worker_runs_in_this_process_without_ray(mnist, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` would fail
    args = ["split-mnist", "--strategies", "naive", "--steps", "3", "--tasks", "2", "--data-root", str(mnist)]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "runs" / "naive-seed0.json").read_text())["machine"]["cpu_count"] > 0


def _threads(job, notify):
    import torch

    return torch.get_num_threads()


def test_threads_hold_for_runs_in_this_process_and_are_given_back(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "ray", None)  # one worker: no Ray
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    calls = Calls()
    run_grid(_threads, {0: None, 1: None}, Resources(workers=1, threads_=want), **calls.kwargs())
    assert calls.results == {0: want, 1: want}
    assert torch.get_num_threads() == before
    run_grid(_threads, {0: None}, Resources(workers=1), **calls.kwargs())
    assert calls.results[0] == before  # no --threads: torch's own


def test_sigterm_stops_the_command_as_ctrl_c_does():
    """A scheduler's pre-emption or time limit (SIGTERM) takes the Ctrl-C path: runs cancelled,
    Ray stopped, finished results kept; outside it SIGTERM is left as it was."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before
