"""Training-step time and memory of HyperCL against hypnettorch and the bare target, in one process.

    python benchmarks/speed.py                      # both configs, writes results/speed/
    python benchmarks/speed.py --configs split-mnist --prev 0,9 --out speed-check  # a quick look

Every implementation trains the same sizes on the same pre-made batch (random pixels: data
loading is not part of a step). A step is forward, loss, regulariser over the earlier tasks,
backward and Adam's step. Each (implementation, config, earlier tasks) is warmed up, then timed
step by step; the median is reported. Implementations:

- ``target``: the target network trained directly (plain loop, the floor);
- ``naive``: Avalanche's ``Naive`` on the target (one Avalanche training iteration);
- ``hypnettorch``: the authors' package, ``ChunkedHMLP`` + ``hnet_regularizer.calc_fix_target_reg``
  (stored targets; ``batch_size=k`` for a random subset);
- ``hypercl-loop``: HyperCL's model and regulariser (factored targets, the default) in the same
  plain loop as hypnettorch; ``hypercl-loop-stored`` the same with stored targets;
- ``hypercl``: the ``HyperCL`` Avalanche strategy, one training iteration (what a user runs).

Neither HyperCL variant uses lookahead here (hypnettorch's ``calc_fix_target_reg`` without
``dTheta`` has none); ``hypercl+lookahead`` adds it. Every implementation uses fused Adam, and
denormal floats are flushed to zero for all of them (``--no-ftz`` keeps them). Memory (peak RSS
of a fresh process) compares stored, frozen-copy and factored targets at 10 and 100 tasks.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from avalanche.core import SupervisedPlugin
from torch.nn import functional as F

from hypercl import MLP, HyperCL, HyperCLModel, HyperNetConfig, StepBudget
from hypercl.bench.results import atomic_write, write_json
from hypercl.bench.strategies import STRATEGIES
from hypercl.data import mnist_root
from hypercl.plugin import HyperCLPlugin
from hypercl.speedups import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed_runner beside this script, however it is run
from speed_runner import full_run_hypercl, full_run_hypnettorch, runner_and_loop  # noqa: E402


@dataclass(frozen=True)
class Config:
    n_in: int
    hidden: tuple[int, ...]
    n_out: int
    hnet: HyperNetConfig
    beta: float
    lr: float
    batch: int = 128


CONFIGS = {  # the paper's settings (../REFERENCE: Split MNIST, Permuted MNIST-10 and -100)
    "split-mnist": Config(784, (400, 400), 2, HyperNetConfig(hidden=(10, 10), chunk_size=42000, task_emb_dim=96,
                                                             chunk_emb_dim=96, init="xavier"), 0.01, 1e-3),
    "pmnist-10": Config(1024, (1000, 1000), 10, HyperNetConfig(hidden=(25, 25), activation=nn.ELU, chunk_size=78000,
                                                               task_emb_dim=24, chunk_emb_dim=8), 0.1, 1e-4),
    "pmnist-100": Config(1024, (1000, 1000), 10, HyperNetConfig(hidden=(200, 250, 350), chunk_size=7500,
                                                                task_emb_dim=128, chunk_emb_dim=12), 0.01, 1e-4),
}  # fmt: skip
ADAM = partial(torch.optim.Adam, fused=True)  # every implementation: the fastest Adam on CPU and GPU
IMPLS = ("target", "naive", "hypnettorch", "hypercl-loop", "hypercl-loop-stored", "hypercl", "hypercl+lookahead")
DEVICE = torch.device("cpu")


# ------------------------------------------------------------------ one step of each
def target_step(cfg: Config, n_prev: int, k: int | None, x, y) -> Callable[[], None]:
    net = MLP(cfg.n_in, cfg.hidden, cfg.n_out).to(x.device)
    opt = ADAM(net.parameters(), cfg.lr)

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def hypnettorch_step(cfg: Config, n_prev: int, k: int | None, x, y) -> Callable[[], None]:
    try:
        from hypnettorch.hnets import ChunkedHMLP
        from hypnettorch.mnets import MLP as HMLP
        from hypnettorch.utils import hnet_regularizer as hreg
    except ImportError:
        raise SystemExit(
            "speed.py: hypnettorch is not installed. Install it with pip install -e '.[speed]' "
            "(or pip install hypnettorch), or leave it out: --impls target,naive,hypercl-loop,hypercl"
        ) from None

    act = cfg.hnet.activation()
    mnet = HMLP(n_in=cfg.n_in, n_out=cfg.n_out, hidden_layers=cfg.hidden, no_weights=True, verbose=False).to(x.device)
    hnet = ChunkedHMLP(mnet.param_shapes, cfg.hnet.chunk_size, chunk_emb_size=cfg.hnet.chunk_emb_dim,
                       cond_in_size=cfg.hnet.task_emb_dim, layers=cfg.hnet.hidden, activation_fn=act,
                       num_cond_embs=n_prev + 1, verbose=False).to(x.device)  # fmt: skip
    targets = hreg.get_current_targets(n_prev, hnet) if n_prev else None
    params = [p for p in hnet.unconditional_params] + [hnet.conditional_params[n_prev]]
    opt = ADAM(params, cfg.lr)

    def step():
        loss = F.cross_entropy(mnet.forward(x, weights=hnet.forward(cond_id=n_prev)), y)
        if n_prev:
            loss = loss + cfg.beta * hreg.calc_fix_target_reg(hnet, n_prev, targets=targets, batch_size=k)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _model(cfg: Config, n_prev: int, targets: str = "factored", device="cpu") -> tuple[HyperCLModel, HyperCLPlugin]:
    model = HyperCLModel(MLP(cfg.n_in, cfg.hidden, cfg.n_out, device=device), hnet=cfg.hnet)
    for t in range(n_prev):
        model.add_task(t)
    return model, HyperCLPlugin(beta=cfg.beta, targets=targets)


def hypercl_loop_step(cfg: Config, n_prev: int, k: int | None, x, y, targets: str = "factored") -> Callable[[], None]:
    model, plugin = _model(cfg, n_prev, targets, device=x.device)
    plugin.reg_tasks = k
    plugin.targets.snapshot(model)
    plugin.earlier_tasks = list(range(n_prev))
    model.add_task(n_prev)
    for t, emb in model.task_embs.items():
        emb.requires_grad_(int(t) == n_prev)
    opt = ADAM([p for p in model.parameters() if p.requires_grad], cfg.lr)

    def step():
        loss = F.cross_entropy(model(x, n_prev), y)
        if n_prev:
            loss = loss + cfg.beta * plugin.regularizer(model, plugin.sample_tasks())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


class _StepTimer(SupervisedPlugin):
    """Avalanche plugin: the wall time of each training iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def before_training_iteration(self, strategy, **kw):
        self._start = time.perf_counter()

    def after_training_iteration(self, strategy, **kw):
        _sync()
        self.times.append(time.perf_counter() - self._start)


class AvalancheRunner:
    """``naive`` or ``hypercl`` as an Avalanche strategy; ``run(n)`` trains one experience of
    ``n`` iterations (task label ``n_prev``) and returns each iteration's time."""

    def __init__(self, impl: str, cfg: Config, n_prev: int, k: int | None, x, y) -> None:
        from avalanche.training import Naive
        from avalanche.training.plugins import EvaluationPlugin

        self.timer, self.n_prev, self.x, self.y = _StepTimer(), n_prev, x, y
        self.budget = StepBudget(1)
        common = dict(train_mb_size=len(x), evaluator=EvaluationPlugin(), plugins=[self.budget, self.timer],
                      device=x.device)  # fmt: skip
        if impl == "naive":
            net = MLP(cfg.n_in, cfg.hidden, cfg.n_out)
            self.strategy = Naive(model=net, optimizer=ADAM(net.parameters(), cfg.lr), **common)
        else:
            self.strategy = HyperCL(target=MLP(cfg.n_in, cfg.hidden, cfg.n_out), hnet=cfg.hnet, beta=cfg.beta,
                                    lr=cfg.lr, reg_tasks=k, lookahead=impl == "hypercl+lookahead", **common)  # fmt: skip
            for t in range(n_prev):
                self.strategy.model.add_task(t)
            self.strategy.hypercl.targets.snapshot(self.strategy.model)

    def __call__(self, steps: int) -> list[float]:
        from avalanche.benchmarks import tensors_benchmark

        n = steps * len(self.x)
        x, y = self.x.cpu(), self.y.cpu()
        xs, ys = x.repeat(steps, 1)[:n], y.repeat(steps)[:n]
        bm = tensors_benchmark(train_tensors=[(xs, ys)], test_tensors=[(x, y)], task_labels=[self.n_prev])
        self.budget.steps, self.timer.times = steps, []
        self.strategy.train(bm.train_stream[0])
        return self.timer.times


class LoopRunner:
    """A plain training loop; ``run(n)`` times ``n`` steps."""

    def __init__(self, impl: str, cfg: Config, n_prev: int, k: int | None, x, y) -> None:
        self.step = LOOPS[impl](cfg, n_prev, k, x, y)

    def __call__(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step()
            _sync()
            times.append(time.perf_counter() - t0)
        return times


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ timing
LOOPS = {"target": target_step, "hypnettorch": hypnettorch_step, "hypercl-loop": hypercl_loop_step,
         "hypercl-loop-stored": partial(hypercl_loop_step, targets="stored")}


def time_group(impls: list[str], cfg: Config, n_prev: int, k: int | None, *, warmup: int, rounds: int,
               min_time: float, seed: int = 0) -> dict[str, dict]:  # fmt: skip
    """Time ``impls`` side by side: after warm-up, ``rounds`` rounds in which each runs a block
    of steps in turn, so that a change in the machine's load hits all of them alike."""
    torch.manual_seed(seed)
    x, y = torch.randn(cfg.batch, cfg.n_in).to(DEVICE), torch.randint(cfg.n_out, (cfg.batch,)).to(DEVICE)
    runners, block = {}, {}
    for impl in impls:
        torch.manual_seed(seed)
        runners[impl] = (LoopRunner if impl in LOOPS else AvalancheRunner)(impl, cfg, n_prev, k, x, y)
        warm = runners[impl](warmup)
        block[impl] = max(1, round(min_time / rounds / statistics.median(warm[1:] or warm)))
    times = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            times[impl] += runners[impl](block[impl])
    return {
        impl: {"median_ms": 1000 * statistics.median(t), "steps": len(t),
               "p10_ms": 1000 * _quantile(t, 0.1), "p90_ms": 1000 * _quantile(t, 0.9)}  # fmt: skip
        for impl, t in times.items()
    }


def _stats(t: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(t), "steps": len(t),
            "p10_ms": 1000 * _quantile(t, 0.1), "p90_ms": 1000 * _quantile(t, 0.9)}  # fmt: skip


def _device_name() -> str:
    if DEVICE.type == "cuda":
        return f"{torch.cuda.get_device_name(DEVICE)} (CUDA {torch.version.cuda})"
    n = torch.get_num_threads()
    return f"CPU, {n} thread{'s' * (n > 1)}"


def _has_hypnettorch() -> bool:
    try:
        import hypnettorch  # noqa: F401
    except ImportError:
        return False
    return True


def pair_ratios(rows: list[dict]) -> dict:
    """Per config and strategy: the runner's step over the plain loop's (goal: <= 1.2)."""
    out: dict = {}
    for r in rows:
        if r["impl"].startswith("runner-"):
            name = r["impl"].removeprefix("runner-")
            loop = next(q for q in rows if q["config"] == r["config"] and q["impl"] == f"loop-{name}")
            out.setdefault(r["config"], {})[name] = r["median_ms"] / loop["median_ms"]
    return out


def regularizer_forms(configs: list[str], ks=(1, 2, 3, 4, 6, 9), reps: int = 15) -> list[dict]:
    """The factored regulariser's direct and Gram forms, forward and backward, for ``k`` tasks:
    where they cross is what ``FactoredTargets.GRAM_COST`` encodes."""
    out = []
    for config in configs:
        cfg = CONFIGS[config]
        for k in ks:
            model, plugin = _model(cfg, k, "factored", device=DEVICE)
            plugin.targets.snapshot(model)
            with torch.no_grad():
                for p in model.hnet.parameters():
                    p.add_(1e-3 * torch.randn_like(p))
            embs = model.embeddings(list(range(k))).detach()
            row = {"config": config, "k": k, "uses_direct": plugin.targets.uses_direct(k)}
            for form in ("direct", "factored", "direct", "factored"):  # twice, interleaved; the better kept
                def step(form=form):
                    plugin.targets.regularizer(model.hnet, embs, None, form=form).backward()
                    _sync()
                times = [_timed(step) for _ in range(reps + 3)][3:]
                row[form + "_ms"] = min(row.get(form + "_ms", float("inf")), 1000 * statistics.median(times))
            out.append(row)
            print(f"forms {config} k={k}: {row}", file=sys.stderr, flush=True)
    return out


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------------ memory (fresh process each)
def memory_probe(config: str, targets: str, n_tasks: int, steps: int = 5) -> dict:
    """Peak memory of a process that holds ``n_tasks`` tasks and trains the last one."""
    cfg = CONFIGS[config]
    model, plugin = _model(cfg, n_tasks - 1, targets)
    plugin.targets.snapshot(model)
    plugin.earlier_tasks = list(range(n_tasks - 1))
    model.add_task(n_tasks - 1)
    opt = ADAM([p for p in model.parameters() if p.requires_grad], cfg.lr)
    x, y = torch.randn(cfg.batch, cfg.n_in), torch.randint(cfg.n_out, (cfg.batch,))
    for _ in range(steps):
        loss = F.cross_entropy(model(x, n_tasks - 1), y) + cfg.beta * plugin.regularizer(model, plugin.earlier_tasks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"peak_rss_mb": _peak_rss_mb(),
            "targets_mb": plugin.targets.nbytes() / 2**20}  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's ``VmHWM`` starts afresh at ``exec``, where
    ``ru_maxrss`` keeps the peak of the process this one was forked from."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(config: str, targets: str, n_tasks: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import speed; "
            f"print(json.dumps(speed.memory_probe({config!r}, {targets!r}, {n_tasks})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ report
def ratios(rows: list[dict], k: int) -> dict:
    """The issue's goals as ratios, per config."""
    def t(config, impl, n, subset=False):
        for r in rows:
            if (r["config"], r["impl"], r["n_prev"], r["subset"]) == (config, impl, n, subset):
                return r["median_ms"]
        return None

    out = {}
    for config in sorted({r["config"] for r in rows}):
        d = {}
        for impl in ("hypercl", "hypercl-loop"):
            pairs = {
                f"{impl} / hypnettorch, 0 earlier": (t(config, impl, 0), t(config, "hypnettorch", 0)),
                f"{impl} / hypnettorch, 9 earlier, all": (t(config, impl, 9), t(config, "hypnettorch", 9)),
                f"{impl} / hypnettorch, 99 earlier, all": (t(config, impl, 99), t(config, "hypnettorch", 99)),
                f"{impl} / hypnettorch, 99 earlier, k={k}": (t(config, impl, 99, True), t(config, "hypnettorch", 99, True)),
                f"{impl}, 99 earlier k={k} / 0 earlier": (t(config, impl, 99, True), t(config, impl, 0)),
            }
            d.update({name: a / b for name, (a, b) in pairs.items() if a and b})
        for impl, floor in (("hypercl", "naive"), ("hypercl-loop", "target")):
            a, b = t(config, impl, 0), t(config, floor, 0)
            if a and b:
                d[f"{impl} / {floor}, 0 earlier"] = a / b
        out[config] = d
    return out


def markdown(report: dict) -> str:
    lines = [f"# Training-step time, {report['machine']['device']}", "", f"Command: `{report['command']}`", "",
             "Median ms per step (forward, loss, regulariser, backward, Adam), batch 128, after warm-up.", ""]  # fmt: skip
    for config in report["configs"]:
        rows = [r for r in report["rows"] if r["config"] == config and not r["impl"].startswith(("runner-", "loop-"))]
        settings = sorted({(r["n_prev"], r["subset"]) for r in rows}, key=lambda s: (s[1], s[0]))
        head = [f"{n} earlier" + (f", k={report['k']}" if sub else "") for n, sub in settings]
        lines += [f"## {config}", "", "| impl | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for impl in IMPLS:
            cells = []
            for n, sub in settings:
                hit = [r for r in rows if (r["impl"], r["n_prev"], r["subset"]) == (impl, n, sub)]
                cells.append(f"{hit[0]['median_ms']:.1f}" if hit else "")
            if any(cells):
                lines.append(f"| {impl} | " + " | ".join(cells) + " |")
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {name} | {v:.2f} |" for name, v in report["ratios"].get(config, {}).items()]
        lines.append("")
    if report.get("pairs"):
        lines += ["## The runner's step against the same strategy's plain loop", "",
                  "`hypercl-bench`'s step (Avalanche's template, the runner's plugins, the next batch from "
                  "`hypercl.data.DeviceData`) and a plain loop of the same strategy on the batch in hand "
                  "(forward, criterion, the algorithm's own hooks, backward, Adam), in alternating blocks of "
                  "the second task; paper preset settings, synthetic data of the benchmark's shape.", "",
                  "| config | strategy | runner (ms) | plain loop (ms) | runner / loop |", "|---|---|---|---|---|"]  # fmt: skip
        for config, by in report["pairs"].items():
            for name, ratio in by.items():
                ms = {r["impl"]: r["median_ms"] for r in report["rows"] if r["config"] == config}
                lines.append(f"| {config} | {name} | {ms['runner-' + name]:.2f} | {ms['loop-' + name]:.2f} | {ratio:.2f} |")
        lines.append("")
    if report.get("full_runs"):
        lines += ["## Whole Split MNIST paper runs (5 tasks x 2000 steps of batch 128, lookahead, beta 0.01)", "",
                  "| impl | seed | training (s) | training + evaluation (s) | final avg acc (%) | BWT (points) |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["full_runs"]:
            lines.append(f"| {r['impl']} | {r['seed']} | {r['train_s']:.1f} | {r['train_and_eval_s']:.1f} | "
                         f"{100 * r['final_avg_acc']:.2f} | {100 * r['bwt']:+.2f} |")  # fmt: skip
        lines.append("")
    if report.get("forms"):
        lines += ["## The factored regulariser's two forms (forward + backward, ms)", "",
                  "| config | tasks | direct | Gram | chosen |", "|---|---|---|---|---|"]  # fmt: skip
        for f in report["forms"]:
            chosen = "direct" if f["uses_direct"] else "Gram"
            lines.append(f"| {f['config']} | {f['k']} | {f['direct_ms']:.2f} | {f['factored_ms']:.2f} | {chosen} |")
        lines.append("")
    if report.get("memory"):
        lines += ["## Memory (peak RSS of a fresh process; targets = what the regulariser keeps)", "",
                  "| config | targets | tasks | peak RSS (MB) | targets (MB) |", "|---|---|---|---|---|"]  # fmt: skip
        for m in report["memory"]:
            lines.append(f"| {m['config']} | {m['targets']} | {m['n_tasks']} | {m['peak_rss_mb']:.0f} | {m['targets_mb']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="split-mnist,pmnist-10")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--prev", default="0,4,9,49,99", help="numbers of earlier tasks")
    p.add_argument("--k", type=int, default=10, help="size of the random subset of earlier tasks")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps of each implementation first")
    p.add_argument("--rounds", type=int, default=4, help="rounds of interleaved timing blocks")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timed steps per implementation and setting")
    p.add_argument("--no-ftz", action="store_true", help="keep denormal floats (default: flushed, for every implementation)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", type=Path, default=Path("results/speed"))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--pairs", default=",".join(STRATEGIES),
                   help="strategies timed in the runner (hypercl-bench's step, data path included) and in a plain "
                        "loop, side by side in their second task; '' for none")  # fmt: skip
    p.add_argument("--pair-block", type=int, default=10, help="steps per block of runner or plain-loop steps")
    p.add_argument("--pair-rounds", type=int, default=6, help="blocks of each per strategy and config")
    p.add_argument("--full-run", type=int, default=0, metavar="SEEDS",
                   help="also time whole Split MNIST paper runs (5 x 2000 steps, evaluation included) of HyperCL "
                        "through hypercl-bench's code and of hypnettorch's plain loop, for this many seeds")  # fmt: skip
    p.add_argument("--data-root", default=None, help="MNIST for --full-run (default $HYPERCL_DATA_ROOT)")
    p.add_argument("--forms", action="store_true",
                   help="also time the factored regulariser's direct and Gram forms for 1-9 tasks (GRAM_COST)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(not args.no_ftz)
    keep_freed_memory()  # for every implementation alike
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this machine has no CUDA GPU (torch {torch.__version__})")
    pairs = [s for s in args.pairs.split(",") if s]
    if [s for s in pairs if s not in STRATEGIES]:
        p.error(f"unknown strategies in --pairs; choose from {', '.join(STRATEGIES)}")
    configs, impls = args.configs.split(","), args.impls.split(",")
    for name, valid in ((configs, CONFIGS), (impls, IMPLS)):
        bad = [v for v in name if v not in valid]
        if bad:
            p.error(f"unknown {bad}; choose from {', '.join(valid)}")
    prev = [int(v) for v in args.prev.split(",")]
    rows = []
    for config in configs:
        groups = [(n, False) for n in prev] + [(n, True) for n in prev if n > args.k]
        for n, subset in groups:
            impls_here = [i for i in impls if n == 0 or i not in ("target", "naive")]
            group = time_group(impls_here, CONFIGS[config], n, args.k if subset else None, warmup=args.warmup,
                               rounds=args.rounds, min_time=args.min_time)  # fmt: skip
            for impl, r in group.items():
                rows.append({"config": config, "impl": impl, "n_prev": n, "subset": subset, **r})
                print(f"{config:12s} {impl:18s} {n:3d} earlier{' k=' + str(args.k) if subset else '':6s} "
                      f"{r['median_ms']:8.1f} ms ({r['steps']} steps)", file=sys.stderr, flush=True)  # fmt: skip
    for config in configs if pairs else ():
        for name in pairs:
            runner, loop = runner_and_loop(name, config, device=DEVICE, block=args.pair_block, rounds=args.pair_rounds)
            for impl, t in ((f"runner-{name}", runner), (f"loop-{name}", loop)):
                rows.append({"config": config, "impl": impl, "n_prev": 1, "subset": False, **_stats(t)})
            print(f"{config:12s} {name:8s} runner {rows[-2]['median_ms']:7.2f} ms, plain loop "
                  f"{rows[-1]['median_ms']:7.2f} ms", file=sys.stderr, flush=True)  # fmt: skip
    full = []
    for seed in range(args.full_run):
        root = mnist_root(args.data_root)
        runs = [full_run_hypercl(root, seed, str(DEVICE))]
        if _has_hypnettorch():
            runs.append(full_run_hypnettorch(root, seed, str(DEVICE)))
        full += runs
        print(f"full runs seed {seed}: {runs}", file=sys.stderr, flush=True)
    forms = regularizer_forms(configs) if args.forms else []
    mem = []
    if not args.no_memory:
        for config in configs:
            for targets in ("stored", "frozen", "factored"):
                for n in (10, 100):
                    mem.append({"config": config, "targets": targets, "n_tasks": n, **memory(config, targets, n)})
                    print(f"memory {config} {targets} {n}: {mem[-1]}", file=sys.stderr, flush=True)
    report = {
        "command": "python benchmarks/speed.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "flush_denormal": not args.no_ftz,
        "optimizer": "torch.optim.Adam(fused=True) for every implementation",
        "machine": {"device": _device_name(), "platform": platform.platform(),
                    "processor": platform.processor(), "torch": torch.__version__},  # fmt: skip
        "configs": configs,
        "k": args.k,
        "rows": rows,
        "ratios": ratios(rows, args.k),
        "pairs": pair_ratios(rows),
        "full_runs": full,
        "forms": forms,
        "memory": mem,
    }
    write_json(args.out / "speed.json", report)
    atomic_write(args.out / "speed.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
