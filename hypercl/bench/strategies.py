"""The strategies a benchmark compares, by the names used on the command line."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import partial

from avalanche.models import MultiHeadClassifier, MultiTaskModule
from avalanche.training import EWC, LwF, Cumulative, Naive, Replay, SynapticIntelligence
from torch import Tensor, nn

from hypercl.bench.avalanche_fixes import fix_synaptic_intelligence_on_cpu
from hypercl.bench.datasets import BenchmarkInfo
from hypercl.bench.presets import Preset
from hypercl.data.loaders import task_groups
from hypercl.inference import METHODS
from hypercl.speedups import adam
from hypercl.strategy import HyperCL
from hypercl.targets import MLP, ZenkeNet, resnet32

#: Target networks by preset name: ``(benchmark, preset, outputs) -> nn.Module``.
TARGETS: dict[str, Callable[[BenchmarkInfo, Preset, int], nn.Module]] = {
    "mlp": lambda info, p, n: MLP(info.in_features, p.hidden, n),
    "resnet32": lambda info, p, n: resnet32(n),
    "zenkenet": lambda info, p, n: ZenkeNet(n),
}


def make_target(info: BenchmarkInfo, p: Preset, n_out: int) -> nn.Module:
    if p.target not in TARGETS:
        raise ValueError(f"Unknown target {p.target!r}; choose from {', '.join(TARGETS)}.")
    return TARGETS[p.target](info, p, n_out)


class MultiHead(MultiTaskModule):
    """The baselines' version of the target: the same body, one output head per task.

    The body is the target with its last linear layer replaced by the identity.
    """

    def __init__(self, target: nn.Module, classes_per_task: int) -> None:
        super().__init__()
        if isinstance(target, MLP):  # its last layer closes the Sequential; keep the ReLU before it
            features = target.net[-1].in_features
            target.net[-1] = nn.Identity()
        else:
            features = target.head.in_features
            target.head = nn.Identity()
        self.body = target
        self.heads = MultiHeadClassifier(features, classes_per_task)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.heads(self.body(x), task_label)

    def forward(self, x: Tensor, task_labels: Tensor) -> Tensor:
        features = self.body(x)
        groups = task_groups(task_labels)
        if groups is None or len(groups.tasks) > 1:
            return self.heads(features, task_labels)
        # One task, known on the host (hypercl.data.DeviceData): no torch.unique(...).item().
        out = self.heads(features, groups.tasks[0])
        return nn.functional.pad(out, (0, self.heads.max_class_label - out.shape[1]))  # as Avalanche pads


def _adam(p: Preset) -> Callable:
    return partial(adam, lr=p.lr, betas=tuple(p.adam_betas))


def _hypercl(info: BenchmarkInfo, p: Preset, **common):
    # In the domain and class scenarios every task-inference method is fitted, so the run
    # can report each; the preset's method decides the outputs Avalanche's metrics see.
    methods = [p.inference, *(m for m in METHODS if m != p.inference)]
    return HyperCL(
        target=make_target(info, p, info.classes_per_task),
        optimizer=_adam(p),
        scenario=info.scenario,
        inference=methods,
        hnet=p.hnet,
        beta=p.beta,
        reg_tasks=p.reg_tasks,
        lookahead=p.lookahead,
        emb_lr=p.emb_lr,
        emb_init=p.emb_init,
        generate=None if p.generate is None else list(p.generate),
        freeze_shared=p.freeze_shared,
        freeze_shared_after=p.freeze_shared_after,
        reset_optimizer_state=p.reset_optimizer,
        **common,
    )


def _baseline(cls, **extra) -> Callable:
    def make(info: BenchmarkInfo, p: Preset, **common):
        if info.scenario == "task":
            model = MultiHead(make_target(info, p, 1), info.classes_per_task)
        else:  # one head over the shared label space (domain) or over every class (class)
            model = make_target(info, p, info.n_outputs)
        opt = _adam(p)(model.parameters())
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
_COMMON = ("steps", "epochs", "batch_size", "lr", "adam_betas", "lr_schedule", "augment", "target", "hidden", "eval_every")
SETTINGS: dict[str, tuple[str, ...]] = {
    "hypercl": (*_COMMON, "hnet", "beta", "reg_tasks", "lookahead", "reset_optimizer", "emb_lr", "emb_init", "generate", "freeze_shared", "freeze_shared_after"),
    "naive": _COMMON,
    "ewc": (*_COMMON, "ewc_lambda"),
    "si": (*_COMMON, "si_lambda"),
    "lwf": (*_COMMON, "lwf_alpha", "lwf_temperature"),
    "replay": (*_COMMON, "replay_mem"),
    "joint": _COMMON,
}


def settings_of(name: str, preset_settings: dict, scenario: str = "task") -> dict:
    """The part of a preset's settings (as in a run's JSON) that strategy ``name`` uses.

    Settings a run's JSON lacks (it predates them) take their default, which is what it ran.
    """
    keys = SETTINGS[name]
    if name == "hypercl" and scenario != "task":
        keys = (*keys, "inference")
    return {k: preset_settings.get(k, _DEFAULTS.get(k)) for k in keys}


_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Preset) if f.default is not dataclasses.MISSING
}
_DEFAULTS = json.loads(json.dumps(_DEFAULTS))  # as stored: tuples become lists


def make_strategy(name: str, info: BenchmarkInfo, preset: Preset, **common):
    """Strategy ``name`` for ``info`` under ``preset``; ``common`` holds Avalanche's own kwargs."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}.")
    return STRATEGIES[name](info, preset, **common)
