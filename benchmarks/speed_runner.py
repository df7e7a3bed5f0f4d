"""What ``benchmarks/speed.py`` times beyond one bare step: the runner's step against the same
strategy's plain loop, whole benchmark runs, and the two forms of the factored regulariser.

- ``runner-<strategy>``: one training step of ``hypercl-bench`` (the strategy as
  :func:`hypercl.bench.strategies.make_strategy` builds it under the benchmark's ``paper`` preset,
  with the runner's plugins, :class:`hypercl.data.DeviceData` among them), timed from the end of
  one step to the end of the next: the next batch's data path is inside.
- ``loop-<strategy>``: the same strategy, model and state, stepped by a plain loop on the batch
  in hand: forward, criterion, the algorithm's own hooks (HyperCL's regulariser and lookahead,
  EWC's, SI's and LwF's), backward, optimizer step; no Avalanche template, no data loading.

Both run in the second task of a synthetic uint8 stream of the benchmark's shape (so EWC, SI,
LwF, Replay and HyperCL have state to use), in alternating blocks inside that one experience.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.training.plugins import EvaluationPlugin

from hypercl import StepBudget
from hypercl.bench.datasets import BENCHMARKS
from hypercl.bench.presets import preset
from hypercl.bench.strategies import make_strategy
from hypercl.data import DeviceData, Standardize
from hypercl.guards import StopOnNonFiniteLoss
from hypercl.speedups import FlushDenormals

#: The plugins whose hooks are the algorithm (called by the plain loop); every other plugin is
#: infrastructure (data, budget, metrics, clock, guards) that only the runner runs.
ALGORITHMS = ("HyperCLPlugin", "EWCPlugin", "SynapticIntelligencePlugin", "LwFPlugin")
HOOKS = ("before_training_iteration", "before_forward", "after_forward", "before_backward",
         "after_backward", "before_update", "after_update", "after_training_iteration")  # fmt: skip
BENCHMARK_OF = {"split-mnist": "split-mnist", "pmnist-10": "pmnist-10"}


class _Interleave:
    """Avalanche plugin that times the runner's steps and, inside the same experience, blocks of
    the plain loop on the batch in hand: alternately ``block`` runner steps, then ``block`` plain
    steps (run from ``before_training_iteration``, so the state is the runner's own)."""

    def __init__(self, device: torch.device, block: int, warmup: int) -> None:
        self.device, self.block, self.warmup = device, block, warmup
        self.runner: list[float] = []
        self.plain: list[float] = []
        self.hooks: dict[str, list[Callable]] | None = None
        self._last: float | None = None
        self._i = 0

    def __getattr__(self, name: str):
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def before_training_iteration(self, strategy, **kwargs) -> None:
        self._i += 1
        k = self._i - self.warmup
        if k > 0 and k % (2 * self.block) == 1:  # a plain block; the step around it is not timed
            if self.hooks is None:
                algorithms = [p for p in strategy.plugins if type(p).__name__ in ALGORITHMS]
                self.hooks = {h: [getattr(p, h) for p in algorithms if _defines(p, h)] for h in HOOKS}
            for _ in range(self.block):
                start = self._now()
                plain_step(strategy, self.hooks)
                self.plain.append(self._now() - start)
            self._last = None

    def after_training_iteration(self, strategy, **kwargs) -> None:
        now = self._now()
        if self._last is not None and self._i > self.warmup:
            self.runner.append(now - self._last)
        self._last = now


def plain_step(s, hooks: dict[str, list[Callable]]) -> None:
    """One step of strategy ``s`` on its current batch: forward, criterion, backward, optimizer
    step, and the algorithm's own hooks where the template calls them; nothing else."""

    def call(name: str) -> None:
        for hook in hooks[name]:
            hook(s)

    call("before_training_iteration")
    s.optimizer.zero_grad()
    s.loss = s._make_empty_loss()
    call("before_forward")
    s.mb_output = s.forward()
    call("after_forward")
    s.loss += s.criterion()
    call("before_backward")
    s.backward()
    call("after_backward")
    call("before_update")
    s.optimizer_step()
    call("after_update")
    call("after_training_iteration")


def synthetic_stream(config: str, n: int, seed: int = 0):
    """Two tasks of ``n`` random uint8 inputs of the benchmark's shape, standardised on the fly."""
    info = BENCHMARKS[BENCHMARK_OF[config]]
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randint(0, 256, (n, info.in_features), generator=g, dtype=torch.uint8) for _ in range(2)]
    ys = [torch.randint(0, info.classes_per_task, (n,), generator=g) for _ in range(2)]
    standardize = Standardize((0.1307,), (0.3081,), channel_dim=-1)
    return tensors_benchmark(train_tensors=list(zip(xs, ys)), test_tensors=list(zip(xs, ys)), task_labels=[0, 1],
                             train_transform=standardize, eval_transform=standardize)  # fmt: skip


def runner_and_loop(name: str, config: str, *, device: torch.device, block: int, rounds: int,
                    warmup: int = 20) -> tuple[list[float], list[float]]:  # fmt: skip
    """Step times of strategy ``name`` in the runner and in the plain loop, interleaved in one
    experience (the second task), on ``config``'s sizes with the ``paper`` preset's settings."""
    info = BENCHMARKS[BENCHMARK_OF[config]]
    settings = preset(info.name, "paper")
    stream = synthetic_stream(config, n=settings.batch_size * 40)
    probe = _Interleave(device, block, warmup)
    budget = StepBudget(warmup)
    infra = [] if name == "hypercl" else [FlushDenormals(), StopOnNonFiniteLoss()]  # HyperCL adds its own
    strategy = make_strategy(name, info, settings, train_mb_size=settings.batch_size, train_epochs=1,
                             eval_mb_size=1000, device=str(device), evaluator=EvaluationPlugin(),
                             plugins=[DeviceData(), budget, *infra, probe])  # fmt: skip
    strategy.train(stream.train_stream[0])
    probe._i, budget.steps = 0, warmup + 2 * block * rounds
    strategy.train(stream.train_stream[1])
    return probe.runner, probe.plain


def _defines(plugin, hook: str) -> bool:
    """Whether ``plugin``'s class (or a base below Avalanche's plugin interface) overrides ``hook``."""
    from avalanche.core import BasePlugin, SupervisedPlugin

    for cls in type(plugin).__mro__:
        if cls in (SupervisedPlugin, BasePlugin, object):
            return False
        if hook in cls.__dict__:
            return True
    return False


# ------------------------------------------------------------------ whole runs
def full_run_hypercl(root, seed: int, device: str) -> dict:
    """HyperCL's Split MNIST ``paper`` run through ``hypercl-bench``'s own code (5 tasks x 2000
    steps, lookahead, evaluation on every task so far after each)."""
    from hypercl.bench.datasets import build, info_of
    from hypercl.bench.run import run_one

    info, settings = info_of("split-mnist"), preset("split-mnist", "paper")
    bm = build("split-mnist", root, seed)
    start = time.perf_counter()
    record = run_one(bm, info, "paper", settings, "hypercl", seed, device=device, command="benchmarks/speed.py --full-run")
    wall = time.perf_counter() - start
    return {"impl": "hypercl", "seed": seed, "train_s": record["train_time_s"], "train_and_eval_s": wall,
            "final_avg_acc": record["final_avg_acc"], "bwt": record["bwt"]}  # fmt: skip


def full_run_hypnettorch(root, seed: int, device: str) -> dict:
    """The same run in the authors' package, in a plain loop over the same data as in-memory
    float tensors: ``ChunkedHMLP`` (the paper preset's sizes, Xavier init), Adam on theta and on
    the task's embedding, the regulariser at ``theta + dTheta`` (``calc_delta_theta`` +
    ``calc_fix_target_reg``), shuffled batches of 128, evaluation on every task so far after each."""
    from hypnettorch.hnets import ChunkedHMLP
    from hypnettorch.mnets import MLP as HMLP
    from hypnettorch.utils import hnet_regularizer as hreg
    from hypnettorch.utils import optim_step

    from hypercl.bench.datasets import build

    settings = preset("split-mnist", "paper")
    cfg = settings.hnet
    torch.manual_seed(seed)
    bm = build("split-mnist", root, seed)
    data = [[_float_tensors(e.dataset, device) for e in split] for split in (bm.train_stream, bm.test_stream)]
    n_tasks = len(data[0])
    mnet = HMLP(n_in=784, n_out=2, hidden_layers=settings.hidden, no_weights=True, verbose=False).to(device)
    hnet = ChunkedHMLP(mnet.param_shapes, cfg.chunk_size, chunk_emb_size=cfg.chunk_emb_dim, cond_in_size=cfg.task_emb_dim,
                       layers=cfg.hidden, activation_fn=cfg.activation(), num_cond_embs=n_tasks, verbose=False).to(device)  # fmt: skip
    _xavier(hnet)
    theta_optim = torch.optim.Adam(hnet.unconditional_params, lr=settings.lr, fused=True)
    start, train_s, acc = time.perf_counter(), 0.0, []
    for task in range(n_tasks):
        t0 = time.perf_counter()
        emb_optim = torch.optim.Adam([hnet.conditional_params[task]], lr=settings.lr, fused=True)
        targets = hreg.get_current_targets(task, hnet) if task else None
        x, y = data[0][task]
        order, pos = torch.randperm(len(y), device=device), 0
        for _ in range(settings.steps):
            if pos + settings.batch_size > len(y):
                order, pos = torch.randperm(len(y), device=device), 0
            idx = order[pos : pos + settings.batch_size]
            pos += settings.batch_size
            theta_optim.zero_grad()
            emb_optim.zero_grad()
            loss = torch.nn.functional.cross_entropy(mnet.forward(x[idx], weights=hnet.forward(cond_id=task)), y[idx])
            loss.backward(retain_graph=task > 0)
            emb_optim.step()
            if task:
                d_theta = optim_step.calc_delta_theta(theta_optim, False, detach_dt=True)
                reg = settings.beta * hreg.calc_fix_target_reg(hnet, task, targets=targets, dTheta=d_theta)
                reg.backward()
            theta_optim.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        train_s += time.perf_counter() - t0
        with torch.no_grad():
            row = []
            for j in range(task + 1):
                xt, yt = data[1][j]
                pred = torch.cat([mnet.forward(xt[i : i + 1000], weights=hnet.forward(cond_id=j)).argmax(1)
                                  for i in range(0, len(yt), 1000)])  # fmt: skip
                row.append(float((pred == yt).float().mean()))
            acc.append(row)
    wall = time.perf_counter() - start
    final = sum(acc[-1]) / n_tasks
    return {"impl": "hypnettorch", "seed": seed, "train_s": train_s, "train_and_eval_s": wall, "final_avg_acc": final,
            "bwt": sum(acc[-1][j] - acc[j][j] for j in range(n_tasks - 1)) / (n_tasks - 1)}  # fmt: skip


def _float_tensors(dataset, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    from hypercl.data import DataCache

    got = DataCache(device).tensors(dataset)
    return got.inputs(torch.arange(len(got), device=got.y.device)), got.y


@torch.no_grad()
def _xavier(hnet) -> None:
    """The paper preset's Xavier init on hypnettorch's hypernetwork (weights Xavier, biases 0)."""
    for p in hnet.unconditional_params:
        if p.dim() > 1:
            torch.nn.init.xavier_uniform_(p)
        else:
            p.zero_()
