"""Stop training at the first non-finite loss, before it reaches the weights."""

from __future__ import annotations

import math

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.optim import SGD, Adam


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def skips_on_device(optimizer) -> bool:
    """Whether ``optimizer.step()`` honours ``optimizer.found_inf`` (a tensor flag that skips
    the update inside the kernel, as ``torch.amp.GradScaler`` uses it): fused Adam, AdamW, SGD."""
    return isinstance(optimizer, (Adam, SGD)) and all(g.get("fused") for g in optimizer.param_groups)


class StopOnNonFiniteLoss(SupervisedPlugin):
    """Raise :class:`NonFiniteLossError` when the training loss is NaN or infinite, saying where;
    the weights keep their last finite update. Works with any Avalanche strategy (add it after
    plugins that add to the loss, as HyperCL does with its own).

    With a fused optimizer (the default of every hypercl strategy) the check costs no host
    round trip: a flag on the device, sticky from the first non-finite loss on, makes the
    optimizer skip every update from there (``found_inf``), and the flag is read at cheap
    points: the end of each epoch and experience, before a :class:`~hypercl.checkpoint.Checkpoint`
    is written, and every ``check_every`` steps if set. The error then names the first bad
    iteration; the steps run after it changed nothing. With other optimizers the loss is read
    at every step (one device synchronisation per step).

    Args:
        check_every: also read the flag every this many steps (``None``: at the cheap points only).
    """

    def __init__(self, *, check_every: int | None = None) -> None:
        super().__init__()
        if check_every is not None and check_every < 1:
            raise ValueError(f"check_every must be >= 1 step (or None), got {check_every}.")
        self.check_every = check_every
        self._reset(None)

    def _reset(self, strategy) -> None:
        self._bad: Tensor | None = None  # sticky: some loss of this experience was not finite
        self._first: Tensor | None = None  # (local iteration, loss) of the first one
        self._steps = 0
        self._start = 0 if strategy is None else strategy.clock.train_iterations
        self._optimizer = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        self._reset(strategy)

    def before_backward(self, strategy, **kwargs) -> None:
        loss = strategy.loss.detach()
        self._steps += 1
        optimizer = strategy.optimizer
        if not skips_on_device(optimizer):
            value = float(loss.sum())
            if not math.isfinite(value):
                raise NonFiniteLossError(self._message(strategy, self._steps, value))
            return
        bad = ~torch.isfinite(loss).all()
        here = torch.stack([loss.new_full((), float(self._steps)), loss.sum()])  # new_full: no host copy
        if self._bad is None:
            self._bad, self._first = bad, here
        else:
            self._first = torch.where(bad & ~self._bad, here, self._first)
            self._bad = self._bad | bad
        optimizer.found_inf = self._bad.to(torch.float32)
        self._optimizer = optimizer
        if self.check_every and self._steps % self.check_every == 0:
            self.check(strategy)

    def check(self, strategy) -> None:
        """Raise if a non-finite loss was seen in this experience (one read of a device flag)."""
        if self._bad is None or not bool(self._bad):
            return
        step, value = self._first.tolist()
        self._release()
        raise NonFiniteLossError(self._message(strategy, int(step), value))

    def after_training_epoch(self, strategy, **kwargs) -> None:
        self.check(strategy)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.check(strategy)
        self._release()

    def _release(self) -> None:
        if self._optimizer is not None and hasattr(self._optimizer, "found_inf"):
            del self._optimizer.found_inf
        self._optimizer, self._bad = None, None

    def _message(self, strategy, step: int, value: float) -> str:
        exp = strategy.experience
        tasks = sorted({int(t) for t in getattr(exp, "task_labels", [])}) if exp is not None else []
        return (
            f"The training loss is {value} at iteration {step} of experience {exp.current_experience} "
            f"(task label(s) {tasks}), iteration {self._start + step} overall. Training stopped before "
            "its update: the weights are those of the last finite step. Lower the learning rate (or "
            "beta), or check the inputs for NaN/inf."
        )
