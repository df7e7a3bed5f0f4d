"""Tune a strategy's options on a validation split, with Ray Tune and Optuna.

Every trial trains one setting (seed 0) under a preset on 90 % of each task's training
set and is scored on the held-out 10 % (the test set is never read). Optuna's sampler
draws the settings from each strategy's declared ranges (:data:`SPACES`, log-uniform for
strengths and learning rates), and ASHA stops hopeless trials after a task: a trial
whose validation accuracy over the tasks so far is in the bottom part of its rung does
not train the rest. Trials run at once on Ray, with the grid's resource flags.

Every finished trial is written (by this process alone) to ``<out>/runs/<strategy>[<setting>].json``
as it lands, stopped trials too (marked, with how far they got), and ``sweep.md`` ranks them.
An interrupted sweep resumes: Tune's state goes to ``<out>/tune/<strategy>`` and each
trial's hypercl checkpoint to ``<out>/checkpoints/``; run the same command again. Trials
already in ``runs/`` are told to Optuna as they are, and not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

from hypercl.bench.datasets import BENCHMARKS, info_of, resolve_data_root
from hypercl.bench.grid import GridError, Resources, connect, count_below_one, log_to, sigterm_as_interrupt
from hypercl.bench.presets import Preset, preset
from hypercl.bench.results import atomic_write, load_run, write_json
from hypercl.bench.run import Job, execute, silence_avalanche_notices
from hypercl.bench.strategies import STRATEGIES, settings_of
from hypercl.hypernet import HyperNetConfig

#: Held out of each task's training set; trials are scored on it.
VALIDATION = 0.1
EVALUATED_ON = "validation: 10 % of each task's training set"


@dataclass(frozen=True)
class Range:
    """A numeric option's range: ``log`` draws uniformly in log space."""

    low: float
    high: float
    log: bool = True

    def tune(self):
        from ray import tune

        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)

    def __contains__(self, value) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    options: tuple

    def tune(self):
        from ray import tune

        return tune.choice(list(self.options))

    def __contains__(self, value) -> bool:
        return value in self.options


LR = Range(1e-5, 1e-2)
#: What the sweep searches for each strategy (the options of :class:`Preset` it uses).
SPACES: dict[str, dict[str, Range | Choice]] = {
    # Avalanche's EWC squares mini-batch gradients of a network that fits its task almost
    # perfectly, so its Fisher is tiny and useful strengths span many decades.
    "ewc": {"ewc_lambda": Range(1.0, 1e12)},
    # SI's importance is path length over squared distance; its scale is unknown a priori.
    "si": {"si_lambda": Range(1e-2, 1e5)},
    "lwf": {"lwf_alpha": Range(0.1, 16.0), "lwf_temperature": Range(0.5, 4.0, log=False)},
    "hypercl": {"beta": Range(1e-4, 0.1), "lr": LR, "lookahead": Choice((True, False))},
    "naive": {"lr": LR},
    "replay": {"lr": LR},
    "joint": {"lr": LR},
}


#: The options that take one number (or flag), by their annotation: what their values may be.
_SCALARS = {
    "int": (int,), "float": (int, float), "bool": (bool,),
    "int | None": (int, type(None)), "float | None": (int, float, type(None)),
}  # fmt: skip


def with_overrides(base: Preset, overrides: dict) -> Preset:
    """``base`` with ``overrides`` applied; hypernetwork options go into its ``hnet``.

    Raises:
        ValueError: an option that takes a number got something else (``lr='1e-3,beta=0.05'``).
        TypeError: an option neither ``Preset`` nor ``HyperNetConfig`` has.
    """
    for f in (*fields(Preset), *fields(HyperNetConfig)):
        want = _SCALARS.get(f.type)
        value = overrides.get(f.name)
        if f.name in overrides and want and not isinstance(value, want):
            hint = " Separate settings with spaces ('lr=1e-3 beta=0.05'), not commas." if "=" in str(value) else ""
            raise ValueError(f"{f.name}={value!r} is not a valid value: expected {f.type}.{hint}")
    hnet_keys = {f.name for f in fields(HyperNetConfig)}
    hnet = replace(base.hnet, **{k: v for k, v in overrides.items() if k in hnet_keys})
    return replace(base, hnet=hnet, **{k: v for k, v in overrides.items() if k not in hnet_keys})


def tag_of(overrides: dict) -> str:
    """A setting in a file name: ``ewc_lambda=3.16e+04,...`` (floats to 3 significant digits)."""

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ",".join(f"{k}={fmt(v)}" for k, v in overrides.items())


def differences(name: str, record: dict, current: Preset) -> str:
    """The settings ``name`` uses that ``record`` ran with and ``current`` no longer has."""
    now = settings_of(name, current.to_dict())
    then = settings_of(name, record["config"]["preset_settings"])
    diffs = []
    for key, value in now.items():
        old = then.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            diffs += [f"{key}.{k}={old.get(k)}" for k in value if old.get(k) != value[k]]
        elif old != value:
            diffs.append(f"{key}={old}")
    return ", ".join(diffs)


@dataclass(frozen=True)
class Sweep:
    """What every trial of one strategy shares (it travels to Ray's workers)."""

    benchmark: str
    root: str
    preset_name: str
    base: Preset
    strategy: str
    n_tasks: int
    out: str
    command: str
    every: int | None
    threads: int

    def job(self, overrides: dict, trial_id: str) -> Job:
        checkpoint = Path(self.out) / "checkpoints" / f"{self.strategy}-{trial_id}.pt"
        return Job(
            self.benchmark, self.root, "task", self.n_tasks, self.preset_name, with_overrides(self.base, overrides),
            self.strategy, 0, self.command, checkpoint=str(checkpoint), resume=True, every=self.every,
            validation=VALIDATION,
        )  # fmt: skip


def trial(config: dict, sweep: Sweep) -> None:
    """One trial, in a Ray worker: train, report validation accuracy after each task."""
    import torch
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    log_to(Path(sweep.out) / "logs" / f"{sweep.strategy}-{trial_id}.log")
    torch.set_num_threads(sweep.threads)
    overrides = _overrides(sweep, config)
    print(f"== trial {trial_id}: {sweep.strategy} {tag_of(overrides)}", flush=True)

    def after_task(done: int, acc: list[list[float]]) -> None:
        # The last task's report comes with the record; a row that evaluated only the task
        # just trained (eval_every > 1) says nothing of the tasks before it: not reported.
        if done < sweep.n_tasks and None not in acc[-1][:done]:
            tune.report({"val_acc": sum(acc[-1][:done]) / done, "tasks_done": done})

    def started(info: dict) -> None:
        if info["resumed"]:
            print(f"resuming from {info['checkpoint']} ({info['resumed']})", flush=True)

    record = execute(sweep.job(overrides, trial_id), started, on_task_end=after_task)
    record.update(overrides=overrides, evaluated_on=EVALUATED_ON, trial_id=trial_id)
    tune.report({"val_acc": record["final_avg_acc"], "tasks_done": sweep.n_tasks, "record": json.dumps(record)})


def _writer(sweep: Sweep, say):
    """A Tune callback, here in the driver: write each trial's JSON as it finishes or is stopped."""
    from ray.tune import Callback

    class Writer(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            say(f"{sweep.strategy} trial {trial.trial_id} {tag_of(_overrides(sweep, trial.config))}: started")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            overrides = _overrides(sweep, trial.config)
            path = Path(sweep.out) / "runs" / f"{sweep.strategy}[{tag_of(overrides)}].json"
            if "record" in result:
                record = json.loads(result["record"])
                say(f"{sweep.strategy} {tag_of(overrides)}: validation {100 * record['final_avg_acc']:.2f} %, "
                    f"BWT {100 * record['bwt']:+.2f}")  # fmt: skip
            else:  # ASHA stopped it after a task: how far it got, and what it had
                stopped = {"after_tasks": result.get("tasks_done", 0), "val_acc": result.get("val_acc")}
                record = _unfinished_record(sweep, trial.trial_id, overrides, stopped=stopped)
                say(f"{sweep.strategy} {tag_of(overrides)}: stopped after {record['stopped']['after_tasks']} "
                    f"tasks (validation {100 * (result.get('val_acc') or 0):.2f} % so far)")  # fmt: skip
            write_json(path, record)
            Path(sweep.job(overrides, trial.trial_id).checkpoint).unlink(missing_ok=True)
            out = Path(sweep.out)  # the table as it stands: a sweep cut short still has one
            atomic_write(out / "sweep.md", table(out, sweep.benchmark, sweep.preset_name, preset(sweep.benchmark, sweep.preset_name)))

        def on_trial_error(self, iteration, trials, trial, **info):
            overrides = _overrides(sweep, trial.config)
            log = Path(sweep.out) / "logs" / f"{sweep.strategy}-{trial.trial_id}.log"
            say(f"{sweep.strategy} {tag_of(overrides)}: failed; its log: {log}")
            failed = {"log": str(log), "after_tasks": (trial.last_result or {}).get("tasks_done", 0)}
            record = _unfinished_record(sweep, trial.trial_id, overrides, failed=failed)
            write_json(Path(sweep.out) / "runs" / f"{sweep.strategy}[{tag_of(overrides)}].json", record)

        def on_experiment_end(self, trials, **info):
            # Interrupted (Ctrl-C): trials are left that neither finished nor failed (no record).
            written = {r.get("trial_id") for r in recorded(sweep)}
            _UNFINISHED[sweep.strategy] = [t.trial_id for t in trials if t.trial_id not in written]

    return Writer()


#: The trials each strategy's last Tune run left unfinished (set as it ends, here in the driver).
_UNFINISHED: dict[str, list[str]] = {}


def _unfinished_record(sweep: Sweep, trial_id: str, overrides: dict, **mark) -> dict:
    """The record of a trial without results: what it ran, and ``stopped`` or ``failed``."""
    settings = with_overrides(sweep.base, overrides).to_dict()
    return {
        "strategy": sweep.strategy, "preset": sweep.preset_name, "overrides": overrides, "trial_id": trial_id,
        "evaluated_on": EVALUATED_ON, "command": sweep.command,
        "config": {"preset_settings": settings, "n_tasks": sweep.n_tasks}, **mark,
    }  # fmt: skip


def _overrides(sweep: Sweep, config: dict) -> dict:
    return {k: config[k] for k in SPACES[sweep.strategy]}


def load_trial(path: Path) -> dict | None:
    """A trial's record: a whole run, or one stopped early or failed (then without results)."""
    run = load_run(path)
    if run is not None:
        return run if "overrides" in run else None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = isinstance(data, dict) and {"strategy", "overrides", "config"} <= data.keys() and ("stopped" in data or "failed" in data)
    return data if ok else None


def recorded(sweep: Sweep) -> list[dict]:
    """The trials of this sweep's strategy in its ``runs`` (finished, stopped or failed) that ran
    under its budget: its preset and tasks, with their own options on top."""
    runs = [load_trial(p) for p in sorted((Path(sweep.out) / "runs").glob(f"{sweep.strategy}[[]*].json"))]
    name = sweep.strategy

    def same_budget(r: dict) -> bool:
        ran = settings_of(name, r["config"].get("preset_settings", {}))
        return r["config"].get("n_tasks") == sweep.n_tasks and r.get("preset") == sweep.preset_name and \
            ran == settings_of(name, with_overrides(sweep.base, r["overrides"]).to_dict())  # fmt: skip

    return [r for r in runs if r and same_budget(r)]


def tune_strategy(sweep: Sweep, trials: int, resources: Resources, grace: int, seed: int, say) -> None:
    """Run (or resume) the sweep of one strategy until ``trials`` of it are recorded."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space = SPACES[sweep.strategy]
    trainable = tune.with_resources(
        tune.with_parameters(trial, sweep=sweep), {"cpu": resources.cpus_per_run, "gpu": resources.gpus_per_run}
    )
    storage = Path(sweep.out).resolve() / "tune"
    path = storage / sweep.strategy
    if tune.Tuner.can_restore(path):  # an interrupted sweep: its trials go on where they were
        say(f"{sweep.strategy}: resuming the sweep in {path}")
        _fit(tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True), sweep)
    done = recorded(sweep)
    remaining = trials - len(done)
    if remaining <= 0:
        say(f"{sweep.strategy}: {len(done)} trials recorded, none to run")
        return
    shutil.rmtree(path, ignore_errors=True)  # its trials are all in runs/
    # What is known already guides the sampler: finished trials with options in the space.
    known = [r for r in done if "final_avg_acc" in r and r["overrides"].keys() == space.keys()
             and all(r["overrides"][k] in space[k] for k in space)]  # fmt: skip
    searcher = OptunaSearch(
        points_to_evaluate=[r["overrides"] for r in known] or None,
        evaluated_rewards=[r["final_avg_acc"] for r in known] or None,
        seed=seed + len(done),
    )
    scheduler = ASHAScheduler(time_attr="tasks_done", max_t=sweep.n_tasks, grace_period=grace, reduction_factor=3)
    tuner = tune.Tuner(
        trainable,
        param_space={k: v.tune() for k, v in space.items()},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler, num_samples=remaining,
            max_concurrent_trials=resources.workers or None,
            reuse_actors=True,  # a worker's next trial reuses its data, already read
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=sweep.strategy, storage_path=str(storage), verbose=0, callbacks=[_writer(sweep, say)],
            failure_config=tune.FailureConfig(max_failures=resources.retries),
        ),  # fmt: skip
    )
    say(f"{sweep.strategy}: {remaining} trials to run ({len(done)} recorded, {len(known)} of them told to the sampler)")
    _fit(tuner, sweep)


def _fit(tuner, sweep: Sweep) -> None:
    """``tuner.fit()``; ``KeyboardInterrupt`` when Ctrl-C ended it with trials left (Tune saved them)."""
    _UNFINISHED.pop(sweep.strategy, None)
    before = signal.getsignal(signal.SIGINT)
    try:
        tuner.fit()
    finally:  # Tune leaves its own handler after a run that ends normally: Ctrl-C would do nothing
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, before)
    if _UNFINISHED.get(sweep.strategy):
        raise KeyboardInterrupt


def table(out: Path, benchmark: str, preset_name: str, base: Preset) -> str:
    """``sweep.md``: every trial in ``out/runs``, best (highest validation accuracy) marked."""
    rows = [(r["strategy"], r) for p in sorted((out / "runs").glob("*.json")) if (r := load_trial(p))]
    order = {name: i for i, name in enumerate(STRATEGIES)}
    rows.sort(key=lambda x: (order.get(x[0], 99), -x[1].get("final_avg_acc", -1)))
    lines = [
        f"# Sweep on {benchmark}, preset `{preset_name}`, seed 0, validation split",
        "",
        "Scored on 10 % of each task's training set held out (never the test set).",
        "Stopped trials were ended early by ASHA after the tasks shown: their validation",
        "accuracy over the tasks so far was among the worst of the trials that got that far.",
        "The rows come from these commands (each run's JSON records its own):",
        "",
        *(f"- `{c}`" for c in dict.fromkeys(r["command"] for _, r in rows)),
        "",
        "The last column names the settings a run used where today's preset differs.",
        "",
        "| strategy | setting | final avg acc (%) | BWT (points) | best | ran with |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(n for n, _ in rows):
        mine = [r for n, r in rows if n == name]
        best = max((r for r in mine if "final_avg_acc" in r), key=lambda r: r["final_avg_acc"], default=None)
        for rec in mine:
            ran_with = differences(name, rec, with_overrides(base, rec["overrides"]))
            if "failed" in rec:
                lines.append(f"| {name} | {tag_of(rec['overrides'])} | failed after {rec['failed']['after_tasks']} tasks (log: {rec['failed']['log']}) | | | {ran_with} |")
                continue
            if "stopped" in rec:
                s = rec["stopped"]
                acc = f"stopped after {s['after_tasks']} tasks ({100 * (s['val_acc'] or 0):.2f} so far)"
                lines.append(f"| {name} | {tag_of(rec['overrides'])} | {acc} | | | {ran_with} |")
                continue
            mark = "**best**" if rec is best else ""
            lines.append(
                f"| {name} | {tag_of(rec['overrides'])} | {100 * rec['final_avg_acc']:.2f} | {100 * rec['bwt']:+.2f} | {mark} | {ran_with} |"
            )
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/sweep.py",
        description="Tune strategies' options on a validation split (Ray Tune, Optuna's sampler, ASHA).",
    )
    p.add_argument("benchmark", choices=sorted(BENCHMARKS))
    p.add_argument("--preset", default="paper")
    p.add_argument("--strategies", default="ewc,si,lwf,hypercl", help=f"comma-separated, of {', '.join(SPACES)}")
    p.add_argument("--trials", type=int, default=12, help="trials per strategy, those already in --out included (default 12)")
    p.add_argument("--grace", type=int, default=2, help="tasks every trial trains before ASHA may stop it (default 2)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (the trials themselves train with seed 0)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=None, help="steps per task instead of the preset's (smoke runs)")
    p.add_argument("--tasks", type=int, default=None, help="only the first N tasks (smoke runs)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also checkpoint every STEPS steps (default: after every task only)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="trials at once (default: as many as the CPUs allow)")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT", help="run on this Ray cluster")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per trial; its torch threads follow (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="share of a GPU per trial (default 0)")
    p.add_argument("--retries", type=int, default=3, help="how often a trial whose worker died starts again")
    return p


def main(argv: list[str] | None = None, *, num_cpus: int | None = None) -> int:
    silence_avalanche_notices()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's tables off: one line per trial instead
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    command = shlex.join(["python", "benchmarks/sweep.py", *argv])
    wanted = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SPACES))
    if unknown or not wanted:
        p.error(f"no search space for {unknown}; choose from {', '.join(SPACES)}")
    if bad := count_below_one(args, ("trials", "grace", "steps", "tasks", "checkpoint_every", "workers")):
        p.error(bad)
    try:
        info, base = info_of(args.benchmark), preset(args.benchmark, args.preset)
        root = resolve_data_root(args.data_root, args.benchmark)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    shown = base  # the table says where a trial's settings differ from the preset's
    if args.steps:
        base = replace(base, steps=args.steps, epochs=None)
    n_tasks = min(args.tasks or info.n_tasks, info.n_tasks)
    out = args.out.resolve()
    from hypercl.bench.cli import writable

    try:
        writable(out)
    except OSError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    resources = Resources(
        workers=args.workers, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
        address=args.address, retries=args.retries, num_cpus=num_cpus,
    )  # fmt: skip

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        import ray

        started_here = connect(resources)
    except GridError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            for name in wanted:
                sweep = Sweep(args.benchmark, str(root.resolve()), args.preset, base, name, n_tasks, str(out),
                              command, args.checkpoint_every, resources.threads)  # fmt: skip
                tune_strategy(sweep, args.trials, resources, min(args.grace, n_tasks), args.seed, say)
                atomic_write(out / "sweep.md", table(out, args.benchmark, args.preset, shown))
    except KeyboardInterrupt:
        say(f"sweep: interrupted; finished trials are in {out / 'runs'}, run the same command to go on")
        return 130
    finally:
        if started_here:
            ray.shutdown()
    text = table(out, args.benchmark, args.preset, shown)
    atomic_write(out / "sweep.md", text)
    print(text)
    return 0
