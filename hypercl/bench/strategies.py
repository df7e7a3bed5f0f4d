"""The strategies a benchmark compares, by the names used on the command line."""

from __future__ import annotations

from collections.abc import Callable

import torch
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from avalanche.training import EWC, LwF, Cumulative, Naive, Replay, SynapticIntelligence
from torch import Tensor, nn

from hypercl.bench.avalanche_fixes import fix_synaptic_intelligence_on_cpu
from hypercl.bench.datasets import BenchmarkInfo
from hypercl.bench.presets import Preset
from hypercl.inference import METHODS
from hypercl.strategy import HyperCL
from hypercl.targets import MLP


class MultiHeadMLP(MultiTaskModule):
    """The baselines' version of the target: the same MLP body, one output head per task."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], classes_per_task: int) -> None:
        super().__init__()
        self.body = MLP(in_features, hidden[:-1], hidden[-1])
        self.act = nn.ReLU()
        self.heads = MultiHeadClassifier(hidden[-1], classes_per_task)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.heads(self.act(self.body(x)), task_label)

    def forward(self, x: Tensor, task_labels: Tensor) -> Tensor:
        return self.heads(self.act(self.body(x)), task_labels)


def _hypercl(info: BenchmarkInfo, p: Preset, **common):
    # In the domain and class scenarios every task-inference method is fitted, so the run
    # can report each; the preset's method decides the outputs Avalanche's metrics see.
    methods = [p.inference, *(m for m in METHODS if m != p.inference)]
    return HyperCL(
        target=MLP(info.in_features, p.hidden, info.classes_per_task),
        scenario=info.scenario,
        inference=methods,
        hnet=p.hnet,
        beta=p.beta,
        reg_tasks=p.reg_tasks,
        lookahead=p.lookahead,
        reset_optimizer_state=p.reset_optimizer,
        lr=p.lr,
        **common,
    )


def _baseline(cls, **extra) -> Callable:
    def make(info: BenchmarkInfo, p: Preset, **common):
        if info.scenario == "task":
            model = MultiHeadMLP(info.in_features, p.hidden, info.classes_per_task)
        else:  # one head over the shared label space (domain) or over every class (class)
            model = MLP(info.in_features, p.hidden, info.n_outputs)
        opt = torch.optim.Adam(model.parameters(), lr=p.lr)
        kwargs = {k: (v(p) if callable(v) else v) for k, v in extra.items()}
        return cls(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(), **kwargs, **common)

    return make


fix_synaptic_intelligence_on_cpu()

STRATEGIES: dict[str, Callable] = {
    "hypercl": _hypercl,
    "naive": _baseline(Naive),
    "ewc": _baseline(EWC, ewc_lambda=lambda p: p.ewc_lambda),
    "si": _baseline(SynapticIntelligence, si_lambda=lambda p: p.si_lambda),
    "lwf": _baseline(LwF, alpha=lambda p: p.lwf_alpha, temperature=lambda p: p.lwf_temperature),
    "replay": _baseline(Replay, mem_size=lambda p: p.replay_mem),
    "joint": _baseline(Cumulative),  # trains on all data seen so far: the upper bound
}


# The preset fields each strategy's result depends on; a finished run counts as done
# (and enters the summary) only while these still match the preset.
_COMMON = ("steps", "batch_size", "lr", "hidden")
SETTINGS: dict[str, tuple[str, ...]] = {
    "hypercl": (*_COMMON, "hnet", "beta", "reg_tasks", "lookahead", "reset_optimizer"),
    "naive": _COMMON,
    "ewc": (*_COMMON, "ewc_lambda"),
    "si": (*_COMMON, "si_lambda"),
    "lwf": (*_COMMON, "lwf_alpha", "lwf_temperature"),
    "replay": (*_COMMON, "replay_mem"),
    "joint": _COMMON,
}


def settings_of(name: str, preset_settings: dict, scenario: str = "task") -> dict:
    """The part of a preset's settings (as in a run's JSON) that strategy ``name`` uses."""
    keys = SETTINGS[name]
    if name == "hypercl" and scenario != "task":
        keys = (*keys, "inference")
    return {k: preset_settings.get(k) for k in keys}


def make_strategy(name: str, info: BenchmarkInfo, preset: Preset, **common):
    """Strategy ``name`` for ``info`` under ``preset``; ``common`` holds Avalanche's own kwargs."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}.")
    return STRATEGIES[name](info, preset, **common)
