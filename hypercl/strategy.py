"""``HyperCL``: the Avalanche strategy, a thin wrapper around the model and the plugin."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from avalanche.core import BasePlugin
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.optim import Optimizer

from hypercl.guards import StopOnNonFiniteLoss
from hypercl.hypernet import HyperNetConfig
from hypercl.inference import TaskInference
from hypercl.layout import Selection
from hypercl.model import HyperCLModel
from hypercl.plugin import HyperCLPlugin
from hypercl.regularizer import TARGETS, FactoredTargets
from hypercl.rng import EvalKeepsRandomState
from hypercl.speedups import FlushDenormals, adam

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]


class HyperCL(SupervisedTemplate):
    """Continual learning with a task-conditioned hypernetwork (von Oswald et al., 2020).

    Takes an ordinary target network, builds a :class:`~hypercl.model.HyperCLModel`
    around it and trains it with a :class:`~hypercl.plugin.HyperCLPlugin`. Everything
    else is Avalanche's ``SupervisedTemplate``: benchmarks with task labels, metrics,
    loggers and plugins work unchanged. Evaluation leaves the random state alone
    (:class:`~hypercl.rng.EvalKeepsRandomState`), so how often a run evaluates, and on which
    experiences (untrained ones included, see :class:`~hypercl.model.HyperCLModel`), never
    changes what it trains.

    Args:
        target: the network whose weights the hypernetwork generates.
        optimizer: ``None`` for Adam(lr) over all trainable parameters (fused where PyTorch
            supports it, :func:`hypercl.speedups.adam`); a factory
            ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``);
            or an optimizer instance, whose parameters Avalanche replaces by the model's.
        criterion: loss function.
        hnet: hypernetwork architecture and init.
        generate: which target parameters the hypernetwork generates; the others are
            ordinary shared parameters. ``None`` generates all of them.
        freeze_shared: freeze the parameters that are not generated.
        freeze_shared_after: train them during the first this many tasks only, then freeze
            them (see :class:`~hypercl.model.HyperCLModel`).
        beta: strength of the output regulariser.
        reg_tasks: regularise this many random earlier tasks per step (``None``: all).
        reg_targets: ``"auto"`` (``"factored"`` where the hypernetwork has a hidden layer,
            else ``"stored"``), ``"stored"``, ``"frozen"`` or ``"factored"`` (see
            :class:`HyperCLPlugin`).
        lookahead: evaluate the regulariser at the optimizer's candidate step.
        lr: learning rate of the default Adam.
        emb_lr: learning rate of the task embeddings, in a parameter group of their own (each
            new task's embedding joins it); ``None``: the optimizer's own, like every other
            parameter. The rest keep the optimizer's groups and rates.
        emb_init: where a new task's embedding starts, ``"random"`` or ``"previous"`` (see
            :class:`~hypercl.model.HyperCLModel`).
        reset_optimizer_state: reset the optimizer's state (e.g. Adam's moments) at every
            experience, as the paper's code does.
        mask_unseen_classes: mask logits of classes a task never had in training.
        scenario: ``"task"`` (task labels given), ``"domain"`` or ``"class"`` (task inferred at
            evaluation; see :class:`~hypercl.model.HyperCLModel`).
        inference: task-inference method(s) for the domain and class scenarios.
        task_stats: keep batch-norm running statistics per task (see
            :class:`~hypercl.model.HyperCLModel`).
        flush_denormal: flush denormal floats to zero while training
            (:class:`~hypercl.speedups.FlushDenormals`; 1.7x faster steps on x86 CPUs).
        train_mb_size, train_epochs, eval_mb_size, device, plugins, evaluator,
        eval_every, peval_mode: as in Avalanche's strategies.
    """

    def __init__(
        self,
        *,
        target: nn.Module,
        optimizer: Optimizer | OptimizerFactory | None = None,
        criterion: nn.Module = nn.CrossEntropyLoss(),
        hnet: HyperNetConfig | None = None,
        generate: Selection = None,
        freeze_shared: bool = False,
        freeze_shared_after: int | None = None,
        beta: float = 0.01,
        reg_tasks: int | None = None,
        reg_targets: Literal["auto", "stored", "frozen", "factored"] = "auto",
        lookahead: bool = True,
        lr: float = 1e-3,
        emb_lr: float | None = None,
        emb_init: Literal["random", "previous"] = "random",
        reset_optimizer_state: bool = False,
        mask_unseen_classes: bool = True,
        scenario: Literal["task", "domain", "class"] = "task",
        inference: str | TaskInference | Sequence[str | TaskInference] = "mahalanobis",
        task_stats: bool = True,
        flush_denormal: bool = True,
        train_mb_size: int = 128,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: torch.device | str | None = None,
        plugins: Sequence[BasePlugin] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] | None = default_evaluator,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        **base_kwargs,
    ) -> None:
        if reg_targets not in ("auto", *TARGETS):
            raise ValueError(f"reg_targets must be 'auto' or one of {sorted(TARGETS)}, got {reg_targets!r}.")
        model = HyperCLModel(
            target,
            hnet=hnet,
            generate=generate,
            freeze_shared=freeze_shared,
            freeze_shared_after=freeze_shared_after,
            mask_unseen_classes=mask_unseen_classes,
            scenario=scenario,
            inference=inference,
            task_stats=task_stats,
            emb_init=emb_init,
        )
        if emb_lr is not None and not emb_lr > 0:
            raise ValueError(f"emb_lr must be a positive learning rate (or None for the optimizer's), got {emb_lr!r}.")
        self.emb_lr = emb_lr
        if optimizer is None:
            optimizer = adam(model.parameters(), lr=lr)
        elif not isinstance(optimizer, Optimizer):
            optimizer = optimizer(model.parameters())
        if reg_targets == "auto":
            reg_targets = "factored" if FactoredTargets.supports(model.hnet) else "stored"
        self.hypercl = HyperCLPlugin(beta=beta, reg_tasks=reg_tasks, targets=reg_targets, lookahead=lookahead)
        self.reset_optimizer_state = reset_optimizer_state
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device if device is not None else "cpu",
            plugins=[
                self.hypercl,
                StopOnNonFiniteLoss(),
                EvalKeepsRandomState(),
                *([FlushDenormals()] if flush_denormal else []), *(plugins or [])
            ],
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
            **base_kwargs,
        )

    def forward(self):
        # Avalanche passes task labels only for experiences that declare them; an online
        # stream's sub-experiences do not, but their mini-batches carry the labels.
        if self.model.scenario == "task" and not hasattr(self.experience, "task_labels") and len(self.mbatch) >= 3:
            return avalanche_forward(self.model, self.mb_x, self.mb_task_id)
        return super().forward()

    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs) -> None:
        reset = reset_optimizer_state or self.reset_optimizer_state
        if self.emb_lr is None:
            super().make_optimizer(reset_optimizer_state=reset, **kwargs)
        else:
            _group_embeddings(self.optimizer, self.model, self.emb_lr, reset)


def _group_embeddings(optimizer: Optimizer, model: HyperCLModel, emb_lr: float, reset: bool) -> None:
    """Put the task embeddings in a last parameter group of their own at ``emb_lr`` and every
    other new trainable parameter in the first group. Avalanche's own bookkeeping cannot:
    it puts new parameters in the group of their neighbours, and the first embedding has none.
    """
    groups = optimizer.param_groups
    if not groups[-1].get("task_embeddings"):
        optimizer.add_param_group({"params": [], "lr": emb_lr, "task_embeddings": True})
    held = {id(p) for g in groups for p in g["params"]}
    embs = {id(p) for p in model.task_embs.values()}
    for p in model.parameters():
        if p.requires_grad and id(p) not in held:
            groups[-1 if id(p) in embs else 0]["params"].append(p)
    if reset:
        optimizer.state.clear()
