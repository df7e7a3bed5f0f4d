"""Task inference: which learned task an input belongs to, when the task label is not given.

In domain- and class-incremental evaluation (CL2/CL3) HyperCL must pick a task embedding
for every test input. Each method here scores every learned task for every input
(higher = more likely) from the weights of all tasks, generated in one batched
hypernetwork pass:

- :class:`EntropyInference` (the paper's HNET+ENT): the task whose prediction has the
  lowest entropy, optionally at a temperature.
- :class:`MahalanobisInference`: the task whose own training data the input resembles
  most (Lee et al., NeurIPS 2018): after training task ``t``, features of task ``t``'s
  training data give class means and one shared covariance; an input scores ``-min_c``
  of its Mahalanobis distance to them. Only statistics are kept, never data. Features
  are the input itself (``features="input"``, the default) or the hidden activations of
  task ``t``'s generated network (``"hidden"``); the latter drift as later tasks move
  the hypernetwork a little, which is why they lose to the input on Split MNIST.
- :class:`OneShotInference`: SupSup's one-shot entropy gradient (Wortsman et al., NeurIPS
  2020) carried over to generated weights: superpose the tasks' weights with equal
  coefficients and pick the task whose coefficient, when raised, lowers the entropy most.

A method is an ``nn.Module`` so its fitted statistics travel in the model's state dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap


def entropy(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def task_logits(model, x: Tensor, tasks: list[int]) -> Tensor:
    """Outputs of every task's network on every input: ``(len(tasks), B, C)``.

    One hypernetwork pass generates all tasks' weights; the target runs on the whole
    batch once per task (with that task's running statistics), vectorised over tasks
    with ``vmap``.
    """
    flat = model.hnet(model.embeddings(tasks))  # (T, P)
    return vmap(_runner(model, x))(flat, stacked_stats(model, tasks))


def stacked_stats(model, tasks: list[int]) -> dict[str, Tensor]:
    """Every task's running statistics stacked along a first dimension ``(T, ...)``."""
    per_task = [model.stats(t) for t in tasks]
    return {n: torch.stack([s[n] for s in per_task]) for n in model.stat_names}


def _runner(model, x: Tensor) -> Callable[[Tensor, dict[str, Tensor]], Tensor]:
    """``(flat weights, running statistics) -> target outputs on x``."""
    return lambda w, s: functional_call(model.target, model.layout.unflatten(w) | s, (x,))


class TaskInference(nn.Module):
    """Base class: ``scores`` rates every task for every input; ``fit_task`` sees a task's data.

    Attributes:
        name: the method's name in results and on the command line.
    """

    name = "base"

    def scores(self, model, x: Tensor, tasks: list[int]) -> tuple[Tensor, Tensor]:
        """``(scores (T, B), logits (T, B, C))`` for ``tasks``; a higher score = more likely."""
        raise NotImplementedError

    def fit_task(self, model, task: int, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Called once after training ``task`` with its training data, as ``(x, local label)``
        mini-batches. Methods that need no statistics ignore it."""

    @property
    def needs_fit(self) -> bool:
        return type(self).fit_task is not TaskInference.fit_task


class _Tempered(TaskInference):
    """A method that scores predictions at a temperature (> 0)."""

    def __init__(self, *, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature


class EntropyInference(_Tempered):
    """The task whose prediction has the lowest entropy at ``temperature`` (HNET+ENT).

    For two-class tasks any temperature gives the same ranking (entropy is monotone in the
    logit margin); with more classes it matters.
    """

    name = "entropy"

    def scores(self, model, x, tasks):
        logits = task_logits(model, x, tasks)
        return -entropy(logits / self.temperature), logits


class OneShotInference(_Tempered):
    """SupSup's one-shot entropy gradient over the tasks' generated weights.

    With ``w(a) = sum_t a_t w_t`` and ``a_t = 1/T``, the score of task ``t`` is
    ``-dH(x; w(a)) / da_t``, the directional derivative of the prediction's entropy along
    ``w_t``; all of them come from forward-mode differentiation, vectorised over tasks.
    """

    name = "oneshot"

    def scores(self, model, x, tasks):
        flat = model.hnet(model.embeddings(tasks)).detach()  # (T, P)
        stats = stacked_stats(model, tasks)
        run = _runner(model, x)
        # The superposed network normalises with the tasks' mean running statistics.
        mean_stats = {n: s.float().mean(0).to(s.dtype) for n, s in stats.items()}
        h = lambda w: entropy(run(w, mean_stats) / self.temperature)  # noqa: E731
        slopes = vmap(lambda w_t: jvp(h, (flat.mean(0),), (w_t,))[1])(flat)  # (T, B)
        return -slopes, vmap(run)(flat, stats)


class MahalanobisInference(TaskInference):
    """Distance to each task's training data, per task, in input or hidden-feature space.

    ``features="input"``: the flattened input. ``features="hidden"``: the inputs of the
    target's ``nn.Linear`` and ``nn.Conv*`` layers after the first (conv inputs averaged
    over space), concatenated, computed with the task's own generated weights.
    Per task: class means ``(K, D)`` and the precision of the shared within-class
    covariance ``(D, D)``, shrunk towards ``shrinkage * mean(diag) * I``. Memory per task
    is ``D * D`` floats (Split MNIST: 784 inputs, 2.5 MB).

    Args:
        features: ``"input"`` or ``"hidden"``.
        shrinkage: covariance shrinkage (see :data:`METHODS` for the values chosen).
        max_samples: at most this many training samples per task for the statistics.
    """

    def __init__(
        self, *, features: Literal["input", "hidden"] = "input", shrinkage: float = 1.0, max_samples: int | None = None
    ) -> None:
        super().__init__()
        if features not in ("input", "hidden"):
            raise ValueError(f"features must be 'input' or 'hidden', got {features!r}.")
        if not shrinkage > 0:
            raise ValueError(f"shrinkage must be > 0 (it keeps the covariance invertible), got {shrinkage}.")
        self.features = features
        self.name = "mahalanobis" if features == "input" else "mahalanobis-hidden"
        self.shrinkage = shrinkage
        self.max_samples = max_samples

    def _features(self, model, weights: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        if self.features == "input":
            return x.flatten(1), functional_call(model.target, weights, (x,))
        return _hidden_features(model.target, weights, x)

    def _buffer(self, kind: str, task: int) -> Tensor:
        name = f"{kind}_{task}"
        if not hasattr(self, name):
            raise ValueError(
                f"Mahalanobis task inference has no statistics for task {task}: they are "
                "computed right after each task's training, from its data. Train through the "
                "HyperCL strategy (or call fit_task after each task) before evaluating."
            )
        return getattr(self, name)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The statistics are buffers registered per task as tasks finish: a fresh instance
        # (resuming from a checkpoint) has none yet, so make room for the stored ones.
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and name.split("_")[0] in ("means", "precision") and "." not in name:
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit_task(self, model, task, batches):
        w = model.functional_params(task)
        feats, labels, n = [], [], 0
        for x, y in batches:
            feats.append(self._features(model, w, x)[0].double())
            labels.append(y.to(feats[-1].device))
            n += len(x)
            if self.max_samples is not None and n >= self.max_samples:
                break
        f, y = torch.cat(feats)[: self.max_samples], torch.cat(labels)[: self.max_samples]
        classes = y.unique()
        means = torch.stack([f[y == c].mean(0) for c in classes])  # (K, D)
        centred = f - means[torch.searchsorted(classes, y)]
        cov = centred.T @ centred / len(f)
        cov += self.shrinkage * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        self.register_buffer(f"means_{task}", means.float())
        self.register_buffer(f"precision_{task}", torch.linalg.inv(cov).float())

    def scores(self, model, x, tasks):
        flat = model.hnet(model.embeddings(tasks))  # (T, P)
        scores, logits = [], []
        for task, w in zip(tasks, flat):
            f, out = self._features(model, model.functional_params(task, w), x)  # (B, D), (B, C)
            diff = f[:, None, :] - self._buffer("means", task)  # (B, K, D)
            dist = torch.einsum("bkd,de,bke->bk", diff, self._buffer("precision", task), diff)
            scores.append(-dist.min(1).values)
            logits.append(out)
        return torch.stack(scores), torch.stack(logits)


def _hidden_features(target: nn.Module, weights: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """Hidden features ``(B, D)`` (inputs of every linear/conv layer but the first) and outputs."""
    layers = [m for m in target.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if len(layers) < 2:
        raise ValueError(
            f"Mahalanobis task inference reads the inputs of the target's linear/conv layers after "
            f"the first, but {type(target).__name__} has {len(layers)} such layer(s). "
            "Use EntropyInference for single-layer targets."
        )
    captured: list[Tensor] = []
    grab = lambda _m, args: captured.append(args[0].flatten(2).mean(2) if args[0].dim() > 2 else args[0])  # noqa: E731
    handles = [m.register_forward_pre_hook(grab) for m in layers[1:]]
    try:
        out = functional_call(target, weights, (x,))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(captured, 1), out


#: Methods by name, with the settings chosen on the Split MNIST validation split (seed 0,
#: paper preset; input shrinkage 1.0 beat 0.1 and 0.01, hidden 0.01 beat 1e-4, 0.1 and 1).
METHODS: dict[str, Callable[[], TaskInference]] = {
    "mahalanobis": partial(MahalanobisInference, features="input", shrinkage=1.0),
    "mahalanobis-hidden": partial(MahalanobisInference, features="hidden", shrinkage=1e-2),
    "entropy": EntropyInference,
    "oneshot": OneShotInference,
}


def make_inference(method: str | TaskInference) -> TaskInference:
    """A method by name (a key of :data:`METHODS`) or as given."""
    if isinstance(method, TaskInference):
        return method
    if method not in METHODS:
        raise ValueError(f"Unknown task-inference method {method!r}; choose from {', '.join(METHODS)}.")
    return METHODS[method]()
