"""What a checkpoint keeps of each plugin on a strategy, as tensors and plain values.

Avalanche's own checkpoints pickle the whole strategy with ``dill`` (code included, so they
need ``torch.load(weights_only=False)``, and they fail on some environments' objects). Here
every plugin's state is a tree of tensors, numbers, strings, lists and dicts, which
``torch.load(weights_only=True)`` reads back without running any code.

Each plugin class maps to a :class:`PluginState`: ``get(plugin) -> state`` and
``put(plugin, state, strategy)``. ``static`` states change only between experiences (the
regulariser's targets, EWC's importances, the replay buffer): a mid-experience resume puts
them back before the experience starts, so its ``before_training_exp`` hooks see them. The
others change every step and are put back at the step the checkpoint was written.

Any other plugin may define ``state_dict()`` and ``load_state_dict(state)``; one with
neither is taken to keep no state across steps (loggers, progress bars).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin, SynapticIntelligencePlugin
from avalanche.training.plugins.clock import Clock
from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer
from avalanche.training.utils import ParamData

from hypercl.budget import StepBudget
from hypercl.plugin import HyperCLPlugin
from hypercl.schedule import EpochSchedule


@dataclass(frozen=True)
class PluginState:
    get: Callable[[Any], Any]
    put: Callable[[Any, Any, Any], None]
    static: bool = False


def _attrs(*names: str) -> PluginState:
    """State made of plain attributes (numbers, lists of numbers)."""

    def get(plugin) -> dict:
        return {n: copy.copy(getattr(plugin, n)) for n in names}

    def put(plugin, state: dict, strategy) -> None:
        for n in names:
            setattr(plugin, n, copy.copy(state[n]))

    return PluginState(get, put)


def _params_out(tree):
    """Avalanche's ``ParamData`` leaves as ``{"param": name, "data": tensor}``."""
    if isinstance(tree, ParamData):
        return {"param": tree.name, "data": tree.data.detach().clone()}
    if isinstance(tree, dict):
        return {k: _params_out(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_params_out(v) for v in tree]
    return tree


def _params_in(tree):
    if isinstance(tree, dict) and set(tree) == {"param", "data"}:
        return ParamData(tree["param"], init_tensor=tree["data"].clone(), device=tree["data"].device)
    if isinstance(tree, dict):
        return {k: _params_in(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_params_in(v) for v in tree]
    return tree


def _hypercl_get(p: HyperCLPlugin) -> dict:
    return {"targets": p.targets.state_dict(), "earlier_tasks": list(p.earlier_tasks), "fit_time_s": p.fit_time_s}


def _hypercl_put(p: HyperCLPlugin, state: dict, strategy) -> None:
    p.targets.load_state_dict(state["targets"], strategy.model)
    p.earlier_tasks, p.fit_time_s = list(state["earlier_tasks"]), state["fit_time_s"]


def _ewc_put(p: EWCPlugin, state: dict, strategy) -> None:
    p.saved_params, p.importances = _params_in(state["saved_params"]), _params_in(state["importances"])


def _si_put(p: SynapticIntelligencePlugin, state: dict, strategy) -> None:
    p.ewc_data, p.syn_data = tuple(_params_in(state["ewc_data"])), _params_in(state["syn_data"])


def _lwf_get(p: LwFPlugin) -> dict:
    lwf = p.lwf
    prev = None if lwf.prev_model is None else lwf.prev_model.state_dict()
    classes = {int(t): sorted(int(c) for c in cs) for t, cs in lwf.prev_classes_by_task.items()}
    return {"prev_model": prev, "prev_classes_by_task": classes, "expcount": lwf.expcount}


def _lwf_put(p: LwFPlugin, state: dict, strategy) -> None:
    # Put back before the experiences after the checkpoint adapt the model: the copy then
    # has the structure (heads, known tasks) the previous model had.
    lwf = p.lwf
    lwf.prev_model = None
    if state["prev_model"] is not None:
        lwf.prev_model = copy.deepcopy(strategy.model)
        lwf.prev_model.load_state_dict(state["prev_model"])
    lwf.prev_classes_by_task.clear()
    lwf.prev_classes_by_task.update({t: set(cs) for t, cs in state["prev_classes_by_task"].items()})
    lwf.expcount = state["expcount"]


def _replay_get(p: ReplayPlugin) -> dict:
    policy = p.storage_policy
    if type(policy) is not ExperienceBalancedBuffer:
        raise TypeError(
            f"Checkpoints keep Replay's default ExperienceBalancedBuffer, not {type(policy).__name__}."
        )
    groups = {}
    for g, buf in policy.buffer_groups.items():
        # The samples themselves, as the buffer loads them: exact where the dataset's transforms
        # are deterministic (every hypercl benchmark: augmentation is a plugin, BatchAugment);
        # with random dataset transforms the restored buffer holds one transformed draw of each.
        # Read by index, under a forked RNG: a save must not move the run's random state.
        with torch.random.fork_rng(devices=[]):
            x, y, t = zip(*(buf.buffer[i][:3] for i in range(len(buf.buffer))))
        x, y, t = torch.stack(x), torch.as_tensor(y), torch.as_tensor(t)
        groups[int(g)] = {"x": x, "y": y, "t": t, "weights": buf._buffer_weights, "max_size": buf.max_size}
    return {"num_exps": policy._num_exps, "groups": groups}


def _replay_put(p: ReplayPlugin, state: dict, strategy) -> None:
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset

    policy = p.storage_policy
    policy._num_exps, policy.buffer_groups = state["num_exps"], {}
    for g, s in state["groups"].items():
        buf = ReservoirSamplingBuffer(s["max_size"])
        labels = s["t"].unique().tolist()  # one label: a constant, as in the experience it came from
        labels = labels[0] if len(labels) == 1 else s["t"].tolist()
        buf.buffer = _make_taskaware_tensor_classification_dataset(s["x"], s["y"], task_labels=labels)
        buf._buffer_weights = s["weights"]
        policy.buffer_groups[g] = buf


STATES: dict[type, PluginState] = {
    Clock: _attrs(
        "train_iterations", "train_exp_counter", "train_exp_epochs",
        "train_exp_iterations", "train_epoch_iterations", "total_iterations",
    ),  # fmt: skip
    StepBudget: _attrs("_done", "_epochs"),
    EpochSchedule: _attrs("_base"),
    HyperCLPlugin: PluginState(_hypercl_get, _hypercl_put, static=True),
    EWCPlugin: PluginState(
        lambda p: {"saved_params": _params_out(p.saved_params), "importances": _params_out(p.importances)},
        _ewc_put,
        static=True,
    ),
    SynapticIntelligencePlugin: PluginState(
        lambda p: {"ewc_data": _params_out(p.ewc_data), "syn_data": _params_out(p.syn_data)}, _si_put
    ),
    LwFPlugin: PluginState(_lwf_get, _lwf_put, static=True),
    ReplayPlugin: PluginState(_replay_get, _replay_put, static=True),
}


def state_handler(plugin) -> PluginState | None:
    """How to save ``plugin``'s state; ``None`` for a plugin that keeps none."""
    for cls in type(plugin).__mro__:
        if cls in STATES:
            return STATES[cls]
    if callable(getattr(plugin, "state_dict", None)) and callable(getattr(plugin, "load_state_dict", None)):
        return PluginState(lambda p: p.state_dict(), lambda p, s, strategy: p.load_state_dict(s))
    return None
