"""Run a grid of independent runs: one after another in this process, or at once on Ray.

With one worker (the default) the runs go one after another in this process and Ray is
not imported. With more, or with the address of a Ray cluster, each run is a Ray task in
a worker process that holds its own CPUs and share of a GPU: on a local Ray instance started
and stopped here, or on the cluster. A worker goes on to a next run once one is done (it has
paid for importing torch and Avalanche and may have the data read), as the runs of one
process do; ``fresh_process`` gives every run a new process instead (``max_calls=1``). Either way only this
process sees the results (``on_result`` is called here as each run finishes), so the
caller alone writes files. A worker that dies (SIGKILL, preemption, out of memory) is
retried, and a run that checkpoints resumes from its last checkpoint; an exception raised
by a run is not retried but reported through ``on_failure``, and the other runs go on.
Ctrl-C cancels the runs not yet finished and stops the Ray processes started here.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What ``--workers > 1`` needs; the message says how to get it.
INSTALL_RAY = 'Running several runs at once needs Ray: pip install "hypercl[ray]" (or pip install "ray[tune]")'

Notify = Callable[[dict], None]


@dataclass(frozen=True)
class Resources:
    """Where and how many runs go at once.

    Attributes:
        workers: runs in flight at once; ``None`` is 1 on this machine and, with an
            ``address``, as many as the cluster has room for.
        cpus_per_run: CPUs Ray reserves for each run (torch's threads follow it).
        gpus_per_run: share of a GPU each run holds (0.25: four runs on one GPU).
        address: ``"auto"`` or ``"host:port"`` of a running Ray cluster; ``None`` starts
            a local instance for the grid and stops it after.
        retries: how often a run whose worker died is started again.
        num_cpus: CPUs of the local instance (default: this machine's).
        threads_: torch threads of each run (default: ``cpus_per_run``, at least 1).
        fresh_process: a new worker process for every run (slower to start; for runs that
            leave state behind in their process).
    """

    workers: int | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    address: str | None = None
    retries: int = 3
    num_cpus: int | None = None
    threads_: int | None = None
    fresh_process: bool = False

    @property
    def uses_ray(self) -> bool:
        return self.address is not None or (self.workers or 1) > 1

    @property
    def threads(self) -> int:
        """torch threads of one run: the CPUs it holds, at least one."""
        return self.threads_ or max(1, int(self.cpus_per_run))


def count_below_one(args, flags: tuple[str, ...]) -> str | None:
    """The command-line error for the first of ``flags`` (attributes of ``args``, counts such as
    --seeds or --workers) given below 1, or ``None`` when all are unset or at least 1."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < 1:
            return f"--{flag.replace('_', '-')} must be at least 1, got {value}"
    return None


@contextmanager
def sigterm_as_interrupt():
    """Within it, SIGTERM (a scheduler's pre-emption or time limit, `kill`) stops the command as
    Ctrl-C does: runs in flight cancelled, Ray's processes stopped, finished results kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        if callable(signal.getsignal(signal.SIGINT)):  # Python's, or Ray Tune's graceful stop
            signal.raise_signal(signal.SIGINT)
        else:  # SIGINT ignored (started in the background) or default: stop all the same
            raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


class GridError(RuntimeError):
    """The grid cannot start (Ray missing, cluster unreachable, resources that never fit)."""


def run_grid(
    fn: Callable[[Any, Notify], Any],
    jobs: dict[Hashable, Any],
    resources: Resources,
    *,
    on_start: Callable[[Hashable, dict], None],
    on_result: Callable[[Hashable, Any], None],
    on_failure: Callable[[Hashable, str], None],
    log_dir: Path | None = None,
    progress: bool = True,
) -> None:
    """Run ``fn(job, notify)`` for every job, in the order given; call back as runs go.

    ``fn`` must be importable by Ray's workers (a module-level function). It may call
    ``notify(info)`` once it has set up, which reaches ``on_start(key, info)`` here (info
    gains ``attempt``, 1 on the first try, and ``pid``). On Ray each run's output goes to
    ``log_dir/<key>.log``, one file per run, appended to by its retries.

    Raises:
        GridError: before any run starts, when Ray is needed and missing, the cluster
            cannot be reached or a run needs more than the cluster has.
    """
    if not resources.uses_ray:
        with _torch_threads(resources.threads_):  # as Ray's workers set them (_in_worker)
            for key, job in jobs.items():
                info = {"attempt": 1, "pid": os.getpid()}
                try:
                    result = fn(job, lambda extra, key=key, info=info: on_start(key, {**info, **extra}))
                except Exception as err:  # a broken run: report it, the others go on
                    traceback.print_exc()
                    on_failure(key, f"{type(err).__name__}: {err}")
                else:
                    on_result(key, result)
        return
    _run_on_ray(fn, jobs, resources, on_start, on_result, on_failure, log_dir, progress)


@contextmanager
def _torch_threads(threads: int | None):
    """Within it, torch uses ``threads`` CPU threads in this process (``None``: as it was)."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def log_name(key: Hashable) -> str:
    """The log file of the run ``key`` (a tuple's parts joined by '-')."""
    parts = key if isinstance(key, tuple) else (key,)
    return "-".join(str(p) for p in parts) + ".log"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GridError(INSTALL_RAY) from None
    return ray


def preflight(resources: Resources) -> None:
    """Raise :class:`GridError` now, in seconds, if the grid's Ray will not start: Ray not
    installed, or nobody answering at ``resources.address``. Nothing when Ray is not used."""
    if not resources.uses_ray:
        return
    _import_ray()
    if resources.address not in (None, "auto"):
        _check_reachable(resources.address)


def connect(resources: Resources) -> bool:
    """Start a local Ray instance, or attach to ``resources.address``; ``True`` when started here.

    An instance this process already runs (``ray.init`` before) is used as it is.
    """
    ray = _import_ray()
    preflight(resources)
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if resources.address is None:
        if resources.gpus_per_run > 0 and _local_gpus() == 0:
            raise GridError(
                f"--gpus-per-run {resources.gpus_per_run} asks for a GPU and this machine has none that "
                "torch can use: leave it out to run on CPUs, or pass --address of a Ray cluster with GPUs."
            )
        ray.init(address="local", num_cpus=resources.num_cpus or os.cpu_count(), num_gpus=_local_gpus(), **options)
        return True
    try:
        ray.init(address=resources.address, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise GridError(_unreachable(resources.address, err)) from None
    return False


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _check_reachable(address: str) -> None:
    """One clear error, in seconds, for a ``host:port`` nobody answers at (not Ray's long wait)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise GridError(f"--address must be 'auto' or host:port of a Ray cluster's head (e.g. 10.0.0.5:6379), got {address!r}.")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise GridError(_unreachable(address, err)) from None


def _unreachable(address: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"No Ray cluster answers at --address {address} ({first}). Start one with `ray start --head` "
        "(then pass --address auto on that machine, or <head-ip>:6379 elsewhere), or leave out "
        "--address to run on a local Ray instance."
    )


def _fits(ray, resources: Resources) -> None:
    """Refuse, before anything runs, a run that needs more than the whole cluster has."""
    total = ray.cluster_resources()
    for name, need in (("CPU", resources.cpus_per_run), ("GPU", resources.gpus_per_run)):
        if need > total.get(name, 0):
            flag = f"--{name.lower()}s-per-run"
            raise GridError(
                f"{flag} {need:g} is more than the Ray cluster has ({total.get(name, 0):g} {name}s in all): "
                f"lower {flag}, or run on a cluster with more."
            )


def log_to(path: Path) -> None:
    """Send this process's stdout and stderr (Python's and the C level's) to the end of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.close(fd)


def _in_worker(fn, job, notify_queue, key, log: str | None, threads: int):
    """The body of one Ray task: log to a file, set torch's threads, run, return the result."""
    if log:
        log_to(Path(log))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # torch, when the run imports it
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    attempt = 1 + sum(1 for line in open(log) if line.startswith("== worker ")) if log else 1
    print(f"== worker pid {os.getpid()} on {socket.gethostname()}, attempt {attempt}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)  # fmt: skip

    def notify(info: dict) -> None:
        notify_queue.put((key, {"attempt": attempt, "pid": os.getpid(), **info}))

    try:
        return fn(job, notify)
    except Exception:  # into the run's log; the caller gets the exception
        traceback.print_exc()
        raise


def _run_on_ray(fn, jobs, resources, on_start, on_result, on_failure, log_dir, progress) -> None:
    from tqdm import tqdm

    ray = _import_ray()
    started_here = connect(resources)
    pending: dict = {}
    try:
        _fits(ray, resources)
        from ray.exceptions import RayError, RayTaskError
        from ray.util.queue import Empty, Queue

        events = Queue(actor_options={"num_cpus": 0})
        remote = ray.remote(
            max_calls=1 if resources.fresh_process else 0,
            num_cpus=resources.cpus_per_run,
            num_gpus=resources.gpus_per_run,
            max_retries=resources.retries,
            retry_exceptions=False,
        )(_in_worker)
        waiting = list(jobs.items())
        limit = resources.workers or len(jobs)
        bar = tqdm(total=len(jobs), desc="runs", unit="run", file=sys.stderr, disable=not progress,
                   mininterval=1 if sys.stderr.isatty() else 60, dynamic_ncols=True)  # fmt: skip

        def drain() -> None:
            while True:
                try:
                    key, info = events.get_nowait()
                except Empty:
                    return
                on_start(key, info)

        while waiting or pending:
            while waiting and len(pending) < limit:
                key, job = waiting.pop(0)
                log = str(log_dir / log_name(key)) if log_dir else None
                pending[remote.remote(fn, job, events, key, log, resources.threads)] = key
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            drain()
            for ref in done:
                key = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as err:  # raised by the run itself: not retried
                    cause = err.cause if isinstance(err.cause, BaseException) else err
                    on_failure(key, f"{type(cause).__name__}: {cause}")
                except RayError as err:  # the worker died more often than retried
                    on_failure(key, f"its worker died {resources.retries + 1} times ({type(err).__name__})")
                else:
                    on_result(key, result)
                bar.update()
        bar.close()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
