"""Learning-rate schedules over the epochs of each experience."""

from __future__ import annotations

from collections.abc import Sequence

from avalanche.core import SupervisedPlugin

#: The step decay of Keras' CIFAR ResNet example, which the paper's ResNet-32 runs use:
#: the learning rate times 0.1 from epoch 81, 0.01 from 121, 1e-3 from 161, 5e-4 from 181.
KERAS_RESNET: tuple[tuple[int, float], ...] = ((81, 1e-1), (121, 1e-2), (161, 1e-3), (181, 5e-4))


class EpochSchedule(SupervisedPlugin):
    """Scale the optimizer's learning rate by a factor that steps down with the epoch.

    ``milestones`` lists ``(epoch, factor)`` pairs (epochs counted from 1 within each
    experience): from that epoch on, every parameter group trains at its base learning
    rate times ``factor``. Every experience starts again at the base rate.
    """

    def __init__(self, milestones: Sequence[tuple[int, float]]) -> None:
        super().__init__()
        self.milestones = sorted((int(e), float(f)) for e, f in milestones)
        if any(e < 1 or f <= 0 for e, f in self.milestones):
            raise ValueError(f"milestones must be (epoch >= 1, factor > 0) pairs, got {list(milestones)}.")
        self._base: list[float] | None = None

    def factor(self, epoch: int) -> float:
        """The factor in (1-based) ``epoch``."""
        return next((f for e, f in reversed(self.milestones) if epoch >= e), 1.0)

    def before_training_exp(self, strategy, **kwargs) -> None:
        self._base = [g["lr"] for g in strategy.optimizer.param_groups]

    def before_training_epoch(self, strategy, **kwargs) -> None:
        scale = self.factor(strategy.clock.train_exp_epochs + 1)
        for group, base in zip(strategy.optimizer.param_groups, self._base):
            group["lr"] = base * scale

    def after_training_exp(self, strategy, **kwargs) -> None:
        for group, base in zip(strategy.optimizer.param_groups, self._base):
            group["lr"] = base
