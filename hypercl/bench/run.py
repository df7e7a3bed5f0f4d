"""One (strategy, seed) run of a benchmark: train task by task, evaluate, record."""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import avalanche
import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader
from tqdm import tqdm

import hypercl
from hypercl.augment import BatchAugment
from hypercl.bench.datasets import BenchmarkInfo, build, info_of
from hypercl.bench.presets import Preset
from hypercl.bench.results import cl_metrics
from hypercl.bench.strategies import make_strategy
from hypercl.budget import StepBudget
from hypercl.checkpoint import Checkpoint, load_checkpoint, restore
from hypercl.data import DeviceData
from hypercl.guards import StopOnNonFiniteLoss
from hypercl.metrics import task_inference_metrics
from hypercl.results import accuracy_matrix_row, evaluates_all
from hypercl.schedule import EpochSchedule
from hypercl.speedups import FlushDenormals, keep_freed_memory


def silence_avalanche_notices() -> None:
    """Hide Avalanche's own deprecation notices and its "no loggers" note: not the user's to fix."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="avalanche")
    warnings.filterwarnings("ignore", message="No loggers specified")


class ProgressBar(SupervisedPlugin):
    """A tqdm bar per experience, with its ETA (``steps`` per experience, or the epochs' worth)."""

    def __init__(self, label: str, steps: int | None) -> None:
        super().__init__()
        self.label, self.steps, self.bar = label, steps, None

    def before_training_exp(self, strategy, **kwargs) -> None:
        exp = strategy.experience.current_experience
        self.bar = tqdm(
            total=self.steps or strategy.train_epochs * len(strategy.dataloader),
            desc=f"{self.label} task {exp}",
            leave=False,
            file=sys.stderr,
            mininterval=0.5 if sys.stderr.isatty() else 60,  # logs get a line a minute
        )

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if self.bar.n == 0:  # the experience's first step here: resumed from a checkpoint, start there
            earlier = strategy.clock.train_exp_iterations  # the clock counts this step after us
            self.bar.initial = self.bar.n = self.bar.last_print_n = earlier
        self.bar.update()

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.bar.close()


def task_inference_row(metrics: dict, stream, n_tasks: int) -> list[float | None]:
    """Task-inference accuracy on each experience of ``stream`` at its index (domain and class
    scenarios), ``None`` at the others: ``n_tasks`` entries."""
    prefix = "TaskInference_Exp/eval_phase/test_stream"
    row = [None] * n_tasks
    for e in stream:
        row[e.current_experience] = metrics[f"{prefix}/Exp{e.current_experience:03d}"]
    return row


@torch.no_grad()
def compare_inference(model, stream, device: str) -> dict:
    """Every fitted task-inference method of ``model`` on every experience of ``stream``.

    Per method: task-inference accuracy and accuracy (right task and right class) per
    experience, their means, and the inference time per 1000 inputs.
    """
    model.eval()
    out = {}
    for k, method in enumerate(model.inference):
        task_acc, acc, seconds, n = [], [], 0.0, 0
        for exp in stream:
            hits = right = 0
            for x, y, *_ in DataLoader(exp.dataset.eval(), batch_size=1000):
                x, y = x.to(device), y.to(device)
                start = time.perf_counter()
                model.inference_method = k
                pred = model(x).argmax(1)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - start
                hits += (model.last_inferred == exp.current_experience).sum().item()
                right += (pred == y).sum().item()
                n += len(y)
            task_acc.append(hits / len(exp.dataset))
            acc.append(right / len(exp.dataset))
        out[method.name] = {
            "task_inference_acc": task_acc,
            "acc": acc,
            "final_avg_task_inference_acc": sum(task_acc) / len(task_acc),
            "final_avg_acc": sum(acc) / len(acc),
            "ms_per_1000_inputs": 1e6 * seconds / n,
        }
    model.inference_method = 0
    return out


def run_one(
    benchmark,
    info: BenchmarkInfo,
    preset_name: str,
    preset: Preset,
    strategy_name: str,
    seed: int,
    *,
    device: str,
    command: str,
    n_tasks: int | None = None,
    checkpoint: Path | None = None,
    every: int | None = None,
    resume: dict | None = None,
    on_task_end: Callable[[int, list[list[float]]], None] | None = None,
) -> dict:
    """Train ``strategy_name`` on every task in order and return the run's record.

    After each task it is evaluated on the test experiences of every task so far (with
    ``preset.eval_every`` > 1, after every ``eval_every``-th task and the last; the others
    evaluate only the task just trained, the rest of their row is ``None``).
    ``n_tasks`` stops after that many tasks (smoke runs). With ``checkpoint``, the run's
    whole state is saved there after each task is evaluated (and every ``every`` steps);
    ``resume`` is such a checkpoint, loaded, to go on from. ``on_task_end(tasks_done,
    acc)`` is called after each task's evaluation and checkpoint, with the accuracy
    matrix so far (a sweep's early stopping reads it).
    """
    RNGManager.set_random_seeds(seed)
    infers = strategy_name == "hypercl" and info.scenario != "task"
    metrics = [accuracy_metrics(experience=True), *(task_inference_metrics() if infers else ())]
    evaluator = EvaluationPlugin(*metrics, loggers=[])
    step_budget = [] if preset.epochs else [StepBudget(preset.steps)]
    # Every strategy's batches come from tensors on its device (the same batches, drawn alike).
    plugins = [DeviceData(), *step_budget, ProgressBar(f"{strategy_name} seed {seed}", None if preset.epochs else preset.steps)]
    if strategy_name != "hypercl":  # HyperCL adds its own: every strategy trains alike
        plugins += [FlushDenormals(), StopOnNonFiniteLoss()]
    if preset.lr_schedule:
        plugins.append(EpochSchedule(preset.lr_schedule))
    if preset.augment:
        plugins.append(BatchAugment())
    saver = Checkpoint(checkpoint, every=every, at_experience_end=False, on_save=_report(strategy_name, seed))
    plugins.append(saver)
    strategy = make_strategy(
        strategy_name,
        info,
        preset,
        train_mb_size=preset.batch_size,
        train_epochs=preset.epochs or 1,
        eval_mb_size=1000 if not info.image else 500,
        device=device,
        evaluator=evaluator,
        plugins=plugins,
    )
    n_tasks = min(n_tasks or len(benchmark.train_stream), len(benchmark.train_stream))
    history = {"acc": [], "task_acc": [], "train_time_s": 0.0}
    first = 0
    if resume is not None:
        first = restore(strategy, resume, benchmark.train_stream[:n_tasks])
        history = resume["extra"]["history"]
        # The steps of the interrupted task up to its checkpoint were kept: so is their time.
        history["train_time_s"] += resume["extra"]["task_time_s"]
    acc, task_acc = history["acc"], history["task_acc"]
    budget = {"preset": preset_name, "scenario": info.scenario, "n_tasks": n_tasks, "settings": preset.to_dict()}
    started = None  # when the task being trained started

    def extra() -> dict:  # saved with every checkpoint
        return {
            "history": history, "benchmark": info.name, "strategy": strategy_name, "seed": seed,
            "budget": budget, "command": command,
            "task_time_s": 0.0 if started is None else time.perf_counter() - started,
        }  # fmt: skip

    saver.extra = extra
    for i in range(first, n_tasks):
        started = time.perf_counter()
        strategy.train(benchmark.train_stream[i])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        history["train_time_s"] += time.perf_counter() - started
        started = None
        if evaluates_all(i, n_tasks, preset.eval_every):
            seen = benchmark.test_stream[: i + 1]
        else:
            seen = benchmark.test_stream[i : i + 1]
        metrics = strategy.eval(seen)
        acc.append(accuracy_matrix_row(metrics, seen, n_tasks))
        if infers:
            task_acc.append(task_inference_row(metrics, seen, n_tasks))
        saver.save(strategy)
        if on_task_end is not None:
            on_task_end(i + 1, acc)
    train_time = history["train_time_s"]
    steps = strategy.clock.train_iterations
    config = {
        "preset_settings": preset.to_dict(),
        "steps_per_task": None if preset.epochs else preset.steps,
        "epochs_per_task": preset.epochs,
        "train_steps": steps,
        "n_tasks": n_tasks,
        "eval_mb_size": strategy.eval_mb_size,
        "device": device,
    }
    extra = {}
    if infers:  # fitting task inference after each task is not training: timed apart
        extra["inference_fit_s"] = strategy.hypercl.fit_time_s
        train_time -= strategy.hypercl.fit_time_s
    if strategy_name == "hypercl":
        config["compression_ratio"] = strategy.model.compression_ratio()
    if infers:
        config["inference"] = [m.name for m in strategy.model.inference]
        extra["task_inference_acc"] = task_acc
        extra["final_avg_task_inference_acc"] = sum(task_acc[-1]) / n_tasks
        extra["inference_methods"] = compare_inference(strategy.model, benchmark.test_stream[:n_tasks], device)
    return {
        "benchmark": info.name,
        "scenario": info.scenario,
        "strategy": strategy_name,
        "seed": seed,
        "preset": preset_name,
        "config": config,
        "versions": versions(),
        "machine": machine(device),
        "acc": acc,
        **cl_metrics(acc),
        "train_time_s": train_time,
        "time_per_step_ms": 1000 * train_time / steps,
        **extra,
        "command": command,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass(frozen=True)
class Job:
    """One (strategy, seed) run of a grid, as plain data: it travels to a Ray worker.

    ``device`` ``None`` is the worker's own choice (its GPU if Ray gave it one, else the
    CPU); ``checkpoint`` is where the run saves (and, with ``resume``, finds) its state.
    """

    benchmark: str
    root: str
    scenario: str
    n_tasks: int
    preset_name: str
    settings: Preset
    strategy: str
    seed: int
    command: str
    checkpoint: str
    resume: bool = False
    every: int | None = None
    device: str | None = None
    validation: float = 0.0


@lru_cache(maxsize=1)  # the runs of one seed in one process share it
def benchmark_of(name: str, root: str, seed: int, scenario: str, n_tasks: int, validation: float):
    return build(name, Path(root), seed, scenario=scenario, n_tasks=n_tasks, validation=validation)


def execute(job: Job, notify: Callable[[dict], None] = lambda info: None, on_task_end=None) -> dict:
    """Run ``job`` here and return its record; ``notify`` hears once it is set up.

    The run resumes from ``job.checkpoint`` when ``job.resume`` and the file exists (the
    caller checked that it belongs to this run, or removed it; a retried worker finds its
    own there); otherwise a file there is replaced.
    ``notify`` gets ``{"resumed": <where it resumes, or None>, "checkpoint": <path>}``.
    """
    silence_avalanche_notices()
    keep_freed_memory()
    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = info_of(job.benchmark, job.scenario)
    benchmark = benchmark_of(job.benchmark, job.root, job.seed, info.scenario, job.n_tasks, job.validation)
    path = Path(job.checkpoint)
    resume = None
    if job.resume and path.exists():
        resume = load_checkpoint(path, map_location=device)
    elif path.exists():
        path.unlink()
    notify({"resumed": where(resume["position"]) if resume else None, "checkpoint": str(path)})
    try:
        return run_one(
            benchmark, info, job.preset_name, job.settings, job.strategy, job.seed,
            device=device, command=job.command, n_tasks=job.n_tasks,
            checkpoint=path, every=job.every, resume=resume, on_task_end=on_task_end,
        )  # fmt: skip
    finally:  # a worker that goes on to a next run (or a GPU shared with others) keeps no cache
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def where(position: dict) -> str:
    """Where a checkpoint's ``position`` is, in words."""
    if position["step"]:
        return f"step {position['step']} of task {position['experience']}"
    return f"{position['experience']} tasks done"


def _report(strategy: str, seed: int):
    def report(position: dict) -> None:
        at = where(position) if position["step"] else f"after task {position['experience'] - 1}"
        print(f"  checkpoint {strategy} seed {seed}: {at}", file=sys.stderr, flush=True)

    return report


def versions() -> dict:
    return {
        "hypercl": hypercl.__version__,
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    """The CPU's model name where the system says it (Linux), else the architecture: runs on
    different CPUs may differ in the last digits (their kernels round differently)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
