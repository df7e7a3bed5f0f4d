"""The hypernetwork continual-learning algorithm as hooks on Avalanche's training loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.func import functional_call
from torch.utils.data import DataLoader

from hypercl.lookahead import candidate_step
from hypercl.model import HyperCLModel
from hypercl.regularizer import TARGETS, FactoredTargets, output_regularizer


class HyperCLPlugin(SupervisedPlugin):
    """Output regularisation of a :class:`HyperCLModel` across experiences.

    - ``before_training_exp``: only the embeddings of the experience's task labels train;
      every other task seen so far is an "earlier task".
    - ``before_backward``: adds ``beta / |S| * sum_{j in S} ||h(e_j) - W*_j||^2`` over a set
      ``S`` of earlier tasks (all of them, or ``reg_tasks`` drawn at random each step),
      in one batched hypernetwork pass. With ``lookahead``, ``h`` is evaluated at
      ``theta + delta_theta``, the optimizer's candidate step (detached).
    - ``after_training_exp``: snapshots ``W*_j`` for every task and freezes all embeddings.

    Args:
        beta: regularisation strength.
        reg_tasks: regularise this many earlier tasks per step, drawn at random;
            ``None`` regularises all of them.
        targets: ``"stored"`` keeps ``W*_j`` in memory (grows with the number of tasks);
            ``"frozen"`` keeps a frozen copy of the hypernetwork and recomputes them
            (memory flat in the number of tasks, one more forward pass per step);
            ``"factored"`` keeps the frozen last layer and each task's features and never
            builds a task's weights (:class:`~hypercl.regularizer.FactoredTargets`: step
            time and memory nearly flat in the number of tasks; needs a hidden layer).
        lookahead: evaluate the regulariser at ``theta + delta_theta``, as in the paper.
            Needs SGD, Adam or AdamW.
    """

    def __init__(
        self,
        *,
        beta: float = 0.01,
        reg_tasks: int | None = None,
        targets: Literal["stored", "frozen", "factored"] = "stored",
        lookahead: bool = True,
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (0 disables the regulariser), got {beta}.")
        if reg_tasks is not None and reg_tasks < 1:
            raise ValueError(f"reg_tasks must be >= 1, or None for all earlier tasks; got {reg_tasks}.")
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {sorted(TARGETS)}, got {targets!r}.")
        self.beta = beta
        self.reg_tasks = reg_tasks
        self.lookahead = lookahead
        self.targets = TARGETS[targets]()
        self.earlier_tasks: list[int] = []
        self._earlier_cache: tuple[Tensor, Tensor | None] | None = None
        self.last_reg: Tensor | None = None
        """Unscaled regulariser of the last training step (detached), for logging."""
        self.fit_time_s = 0.0
        """Seconds spent fitting task inference after each experience, in all."""

    def regularizer(
        self, model: HyperCLModel, tasks: Sequence[int], delta: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Unscaled regulariser over ``tasks``, at the hypernetwork's parameters plus ``delta``."""
        return self._value(model, model.embeddings(tasks).detach(), self.targets.rows(tasks), delta)

    def _value(self, model: HyperCLModel, embs: Tensor, rows: Tensor | None, delta: dict[str, Tensor] | None) -> Tensor:
        """The regulariser of the tasks with embeddings ``embs`` (detached) and rows ``rows`` of
        the targets (``None``: all of them, in order)."""
        moved = None if delta is None else {n: p + delta[n] for n, p in model.hnet.named_parameters()}
        if isinstance(self.targets, FactoredTargets):
            return self.targets.regularizer(model.hnet, embs, rows, moved)
        weights = model.hnet(embs) if moved is None else functional_call(model.hnet, moved, (embs,))
        return output_regularizer(weights, self.targets.at(rows))

    def sample(self, device: torch.device | str = "cpu") -> Tensor | None:
        """Positions in ``earlier_tasks`` of the tasks to regularise at this step, sorted, drawn on
        ``device`` (no host round trip); ``None`` when all of them are."""
        n = len(self.earlier_tasks)
        if self.reg_tasks is None or self.reg_tasks >= n:
            return None
        return torch.randperm(n, device=device)[: self.reg_tasks].sort().values

    def sample_tasks(self) -> list[int]:
        """The earlier tasks to regularise at this step (on the host, for inspection)."""
        pick = self.sample()
        return list(self.earlier_tasks) if pick is None else [self.earlier_tasks[i] for i in pick.tolist()]

    def _earlier(self, model: HyperCLModel) -> tuple[Tensor, Tensor | None]:
        """The earlier tasks' embeddings and target rows, made once per experience: they do not
        change while it trains. Made at the first step, after a resumed run's state is loaded."""
        if self._earlier_cache is None:
            tasks = self.earlier_tasks
            self._earlier_cache = (model.embeddings(tasks).detach().clone(), self.targets.rows(tasks))
        return self._earlier_cache

    # ------------------------------------------------------------------ hooks
    def before_training_exp(self, strategy, **kwargs) -> None:
        model = _hypercl_model(strategy)
        if isinstance(self.targets, FactoredTargets) and not FactoredTargets.supports(model.hnet):
            self.targets.snapshot(model)  # raises its message before any training is spent
        current = model.tasks_of(strategy.experience)
        for key, emb in model.task_embs.items():
            emb.requires_grad_(int(key) in current)
        if any(t not in current and t not in self.targets.tasks for t in model.tasks):
            # Trained tasks without targets: the model's state was loaded (load_state_dict) into
            # a fresh strategy. Its hypernetwork is as the last experience left it, which is what
            # the targets are taken from after every experience.
            self.targets.snapshot(model)
        self.earlier_tasks = [t for t in self.targets.tasks if t not in current]
        self._earlier_cache = None
        self.last_reg = None

    def before_backward(self, strategy, **kwargs) -> None:
        if self.beta == 0 or not self.earlier_tasks:
            return
        model = _hypercl_model(strategy)
        embs, rows = self._earlier(model)
        pick = self.sample(embs.device)
        if pick is not None:
            embs = embs[pick]
            rows = pick if rows is None else rows[pick]
        if not self.lookahead:
            reg = self._value(model, embs, rows, None)
            strategy.loss = strategy.loss + self.beta * reg
        else:
            delta = self._candidate_step(strategy, model)
            reg = self._value(model, embs, rows, delta)
            # The loss's own gradients are already in .grad: backward only the regulariser.
            strategy.loss = strategy.loss.detach() + self.beta * reg
        self.last_reg = reg.detach()

    def after_training_exp(self, strategy, **kwargs) -> None:
        model = _hypercl_model(strategy)
        if model.scenario != "task":
            self._fit_inference(strategy, model)
        self.targets.snapshot(model)
        for emb in model.task_embs.values():
            emb.requires_grad_(False)

    def _fit_inference(self, strategy, model: HyperCLModel) -> None:
        """Let each task-inference method see the finished task's training data (eval transforms)."""
        methods = [m for m in model.inference if m.needs_fit]
        if not methods:
            return
        start = time.perf_counter()
        task = model.active_task
        data = strategy.experience.dataset.eval()
        loader = DataLoader(data, batch_size=max(strategy.eval_mb_size or 1, 256), collate_fn=getattr(data, "collate_fn", None))
        was_training = model.training
        model.eval()
        for method in methods:
            batches = ((x.to(strategy.device), model.local_labels(task, y.to(strategy.device))) for x, y, *_ in loader)
            method.fit_task(model, task, batches)
        model.train(was_training)
        self.fit_time_s += time.perf_counter() - start

    def _candidate_step(self, strategy, model: HyperCLModel) -> dict[str, Tensor]:
        """Accumulate the loss's gradients into ``.grad`` and return theta's candidate step."""
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(strategy.loss, params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        grad_of = dict(zip(map(id, params), grads))
        names, theta = zip(*model.hnet.named_parameters())
        steps = candidate_step(strategy.optimizer, theta, [grad_of.get(id(p)) for p in theta])
        return dict(zip(names, steps))


def _hypercl_model(strategy) -> HyperCLModel:
    if not isinstance(strategy.model, HyperCLModel):
        raise ValueError(
            f"HyperCLPlugin needs a HyperCLModel as the strategy's model, got "
            f"{type(strategy.model).__name__}. Wrap the network as HyperCLModel(target), "
            "or use the HyperCL strategy, which does it for you."
        )
    return strategy.model
