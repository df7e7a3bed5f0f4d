"""The output regulariser: keep the weights generated for earlier tasks where they were."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from hypercl.model import HyperCLModel


def output_regularizer(weights: Tensor, targets: Tensor) -> Tensor:
    """Mean over tasks of the squared distance between generated and target weights.

    ``(1/k) * sum_j ||weights[j] - targets[j]||^2`` for ``(k, P)`` inputs: the paper's
    regulariser without its strength beta.
    """
    return F.mse_loss(weights, targets, reduction="sum") / len(weights)


class TargetWeights(Protocol):
    """Where the regulariser's targets ``W*_j`` come from."""

    tasks: list[int]

    def snapshot(self, model: HyperCLModel) -> None:
        """Record the targets of every task the model knows, as it is now."""

    def __call__(self, tasks: Sequence[int]) -> Tensor:
        """Targets ``(len(tasks), P)`` of the given snapshotted tasks."""

    def nbytes(self) -> int:
        """Memory the targets take."""


class StoredTargets:
    """The generated weights of every task, stored: memory grows with the number of tasks."""

    def __init__(self) -> None:
        self.tasks: list[int] = []
        self._weights: Tensor | None = None

    @torch.no_grad()
    def snapshot(self, model: HyperCLModel) -> None:
        self.tasks = model.tasks
        self._weights = model.hnet(model.embeddings(self.tasks)).detach().clone()

    def __call__(self, tasks: Sequence[int]) -> Tensor:
        rows = [self.tasks.index(t) for t in tasks]
        if rows == list(range(len(self.tasks))):
            return self._weights
        return self._weights[torch.tensor(rows, device=self._weights.device)]

    def nbytes(self) -> int:
        return 0 if self._weights is None else self._weights.nbytes


class FrozenCopyTargets:
    """A frozen copy of the hypernetwork recomputes the targets: memory flat in the number of tasks."""

    def __init__(self) -> None:
        self.tasks: list[int] = []
        self._hnet = None
        self._embs: Tensor | None = None

    @torch.no_grad()
    def snapshot(self, model: HyperCLModel) -> None:
        hnet = model.hnet
        # The output map never changes: share it instead of copying 2 x P numbers.
        memo = {id(hnet.out_scale): hnet.out_scale, id(hnet.out_shift): hnet.out_shift}
        self._hnet = copy.deepcopy(hnet, memo).requires_grad_(False)
        self.tasks = model.tasks
        self._embs = model.embeddings(self.tasks).detach().clone()

    @torch.no_grad()
    def __call__(self, tasks: Sequence[int]) -> Tensor:
        rows = torch.tensor([self.tasks.index(t) for t in tasks], device=self._embs.device)
        return self._hnet(self._embs[rows])

    def nbytes(self) -> int:
        if self._hnet is None:
            return 0
        own = (p for p in self._hnet.parameters())
        return sum(t.nbytes for t in own) + self._embs.nbytes


TARGETS: dict[str, type] = {"stored": StoredTargets, "frozen": FrozenCopyTargets}
