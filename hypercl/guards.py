"""Stop training at the first non-finite loss, before it reaches the weights."""

from __future__ import annotations

import math

from avalanche.core import SupervisedPlugin


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(SupervisedPlugin):
    """Raise :class:`NonFiniteLossError` when the loss about to be backpropagated is NaN or
    infinite, saying where; the weights keep their last finite update. Works with any Avalanche
    strategy (add it after plugins that add to the loss, as HyperCL does with its own)."""

    def before_backward(self, strategy, **kwargs) -> None:
        value = float(strategy.loss.detach())
        if math.isfinite(value):
            return
        clock, exp = strategy.clock, strategy.experience
        tasks = sorted({int(t) for t in getattr(exp, "task_labels", [])}) if exp is not None else []
        raise NonFiniteLossError(
            f"The training loss is {value} at iteration {clock.train_exp_iterations + 1} of experience "
            f"{exp.current_experience} (task label(s) {tasks}), iteration {clock.train_iterations + 1} "
            "overall. Training stopped before the update: the weights are those of the last finite "
            "step. Lower the learning rate (or beta), or check the inputs for NaN/inf."
        )
