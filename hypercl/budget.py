"""Train every experience for a fixed number of optimizer steps, as the paper does."""

from __future__ import annotations

import math

from avalanche.core import SupervisedPlugin


class StepBudget(SupervisedPlugin):
    """Train each experience for exactly ``steps`` mini-batches, whatever ``train_epochs`` says.

    The paper budgets steps, not epochs (e.g. 2000 steps of batch 128 per Split MNIST
    task). Before each experience this plugin sets the strategy's ``train_epochs`` to
    the number of epochs that covers ``steps`` iterations and stops training after the
    last one; the strategy's own ``train_epochs`` is restored afterwards.

    Works with any Avalanche SGD strategy, so baselines get the same budget.
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}.")
        self.steps = steps
        self._done = 0
        self._epochs: int | None = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        self._done = 0
        self._epochs = strategy.train_epochs
        per_epoch = len(strategy.dataloader)
        if per_epoch == 0:
            raise ValueError("StepBudget: the experience's training data loader is empty.")
        strategy.train_epochs = math.ceil(self.steps / per_epoch)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self._done += 1
        if self._done >= self.steps:
            strategy.stop_training()

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self._epochs is not None:
            strategy.train_epochs = self._epochs
        # The stop request lands in the last epoch, where Avalanche never clears it;
        # left set, it would skip the whole next experience of a multi-experience train().
        strategy._stop_training = False
