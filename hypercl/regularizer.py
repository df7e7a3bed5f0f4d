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

    def rows(self, tasks: Sequence[int]) -> Tensor | None:
        """Where ``tasks`` are among the snapshot's, on its device (``None``: all, in order)."""

    def at(self, rows: Tensor | None) -> Tensor:
        """Targets of the tasks at ``rows`` (from :meth:`rows`; ``None`` for all)."""

    def nbytes(self) -> int:
        """Memory the targets take."""

    def state_dict(self) -> dict:
        """Everything :meth:`snapshot` recorded (tensors and plain values, for checkpoints)."""

    def load_state_dict(self, state: dict, model: HyperCLModel) -> None:
        """Restore a :meth:`state_dict` into these targets of ``model``."""


class StoredTargets:
    """The generated weights of every task, stored: memory grows with the number of tasks."""

    def __init__(self) -> None:
        self.tasks: list[int] = []
        self._weights: Tensor | None = None

    @torch.no_grad()
    def snapshot(self, model: HyperCLModel) -> None:
        self.tasks = model.tasks
        if self.tasks:  # nothing to keep before the first task
            self._weights = model.hnet(model.embeddings(self.tasks)).detach().clone()

    def __call__(self, tasks: Sequence[int]) -> Tensor:
        return self.at(self.rows(tasks))

    def rows(self, tasks: Sequence[int]) -> Tensor | None:
        return _rows(self.tasks, tasks, self._weights)

    def at(self, rows: Tensor | None) -> Tensor:
        return self._weights if rows is None else self._weights[rows]

    def nbytes(self) -> int:
        return 0 if self._weights is None else self._weights.nbytes

    def state_dict(self) -> dict:
        return {"tasks": list(self.tasks), "weights": self._weights}

    def load_state_dict(self, state: dict, model: HyperCLModel) -> None:
        self.tasks, self._weights = list(state["tasks"]), state["weights"]


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
        self.tasks = model.tasks
        if not self.tasks:  # nothing to keep before the first task
            return
        self._hnet = copy.deepcopy(hnet, memo).requires_grad_(False)
        self._embs = model.embeddings(self.tasks).detach().clone()

    def __call__(self, tasks: Sequence[int]) -> Tensor:
        return self.at(self.rows(tasks))

    def rows(self, tasks: Sequence[int]) -> Tensor | None:
        return _rows(self.tasks, tasks, self._embs)

    @torch.no_grad()
    def at(self, rows: Tensor | None) -> Tensor:
        return self._hnet(self._embs if rows is None else self._embs[rows])

    def nbytes(self) -> int:
        if self._hnet is None:
            return 0
        own = (p for p in self._hnet.parameters())
        return sum(t.nbytes for t in own) + self._embs.nbytes

    def state_dict(self) -> dict:
        hnet = None if self._hnet is None else self._hnet.state_dict()
        return {"tasks": list(self.tasks), "hnet": hnet, "embs": self._embs}

    @torch.no_grad()
    def load_state_dict(self, state: dict, model: HyperCLModel) -> None:
        self.tasks, self._embs, self._hnet = list(state["tasks"]), state["embs"], None
        if state["hnet"] is not None:
            hnet = model.hnet
            memo = {id(hnet.out_scale): hnet.out_scale, id(hnet.out_shift): hnet.out_shift}
            self._hnet = copy.deepcopy(hnet, memo).requires_grad_(False)
            self._hnet.load_state_dict(state["hnet"])


class FactoredTargets:
    """The targets in factored form, for hypernetworks whose last layer is linear (any with a
    hidden layer): ``W*_j`` is that layer's frozen weights ``w* = [V*, b*]`` (``C x (H+1)``)
    applied to task ``j``'s frozen features ``a*_j`` (``K x (H+1)``, with a 1 for the bias), so
    no task's weights are ever stored. With ``D = w - w*`` and ``d_j = a_j - a*_j``,

    ``W_j - W*_j = a_j D' + d_j w*'``  (per chunk; ``s``, the output map's scale, weighs each unit)

    and the regulariser has two exact forms, both in small differences (no cancellation, so
    float32 suffices):

    - *direct*: build ``a_j D' + d_j w*'`` for the ``k`` tasks regularised (``k x P`` numbers,
      two matrix products) and sum its weighted squares;
    - *factored*: ``a_j' G_DD a_j + 2 a_j' G_Dw d_j + d_j' G_ww d_j`` per chunk, with the Gram
      matrices ``G_DD = D' S D``, ``G_Dw = D' S w*`` (one pass over the last layer whatever
      ``k``) and ``G_ww = w*' S w*`` (fixed, made at the snapshot).

    Each step takes the cheaper for its ``k`` (:meth:`uses_direct`, a fixed cost model, so runs
    stay deterministic): the direct form's cost grows with ``k``, the factored one's does not.
    Memory: the frozen layer plus ``K x (H+1)`` numbers per task.
    """

    #: Cost of the Gram form per number of the last layer (``C (H+1)`` of them), in units of the
    #: direct form's cost per generated number and task (``K C`` per task). Both forms are bound
    #: by passes over memory, not by arithmetic; measured with ``benchmarks/speed.py --forms``
    #: (2 CPU cores, fp32): about 7 ns per number of the layer against 3-4 ns per generated
    #: number, on the paper's Split MNIST and Permuted MNIST sizes.
    GRAM_COST = 2.0
    #: Memory the direct form may keep for every snapshotted task's chunk outputs.
    TARGET_CACHE_BYTES = 512 * 2**20

    def __init__(self) -> None:
        self.tasks: list[int] = []
        self._w: Tensor | None = None       # (H+1, C) frozen [V*, b*]', stored wide like the layer
        self._a: Tensor | None = None       # (T, K, H+1) frozen features, with a 1 for the bias
        self._seg_s2: Tensor | None = None  # (K, m) s2 per chunk and interval
        self._shift: Tensor | None = None   # (P,) the output map's shift (cancels in the regulariser)
        self._bounds: list[int] = []        # intervals of output units with one s2 per chunk
        self._derive()

    def _derive(self) -> None:
        """What follows from the state: the fixed Gram matrices and the per-unit weights."""
        self._gww: Tensor | None = None  # (K, H+1, H+1) w*' S w*
        self._s2: Tensor | None = None   # (K, C) s2 of every unit, 0 beyond the last weight
        self._hstar: Tensor | None = None  # (T, K, C) the direct form's targets, made when first needed
        if self._w is None:
            return
        w = self._w.double()
        self._gww = _gram(self._bounds, self._seg_s2.double(), w, w).to(self._w.dtype)
        sizes = torch.tensor(self._bounds[1:]) - torch.tensor(self._bounds[:-1])
        self._s2 = self._seg_s2.repeat_interleave(sizes.to(self._seg_s2.device), dim=1)

    @staticmethod
    def supports(hnet) -> bool:
        return len(hnet.layers) > 0

    @torch.no_grad()
    def snapshot(self, model: HyperCLModel) -> None:
        hnet = model.hnet
        if not self.supports(hnet):
            raise ValueError(
                'reg_targets="factored" needs a hypernetwork with a hidden layer (its last layer '
                'linear in the features); this one has hidden=(). Use "stored" or "frozen".'
            )
        self.tasks = model.tasks
        if not self.tasks:
            return
        self._w = _augmented_weight(hnet.layers[-1].weight, hnet.layers[-1].bias).clone()
        self._bounds, self._seg_s2 = _segments(hnet.output_weights())
        self._shift = hnet.out_shift.detach().clone()
        self._a = _augmented(hnet(model.embeddings(self.tasks), features=True)).clone()
        self._derive()

    def __call__(self, tasks: Sequence[int]) -> Tensor:
        """The targets as full weight rows (for inspection; the regulariser does not need them)."""
        return self.at(self.rows(tasks))

    def rows(self, tasks: Sequence[int]) -> Tensor | None:
        return _rows(self.tasks, tasks, self._a)

    def at(self, rows: Tensor | None) -> Tensor:
        rows = slice(None) if rows is None else rows
        out = (self._a[rows].double() @ self._w.double()) * self._s2.double().sqrt()  # (T, K, C)
        return (out.flatten(1)[:, : len(self._shift)] + self._shift).to(self._shift.dtype)

    def uses_direct(self, k: int) -> bool:
        """Whether ``k`` tasks are cheaper in the direct form (``k K C`` numbers made and read) than
        in the Gram form (passes over the ``C (H+1)`` numbers of the layer and over the
        ``K (H+1)^2`` of its per-chunk Gram matrices, ``GRAM_COST`` each). The second term is
        negligible for the MNIST hypernetworks (few chunks, few features) and dominant for
        CIFAR's ZenkeNet hypernetwork (228 chunks, 201 features: 9.2M numbers per Gram matrix;
        for 2 tasks, forward and backward, the Gram form took 590 ms against the direct form's
        72, side by side on one CPU thread)."""
        n_chunks, h1 = self._a.shape[1], self._a.shape[2]
        c = self._w.shape[1]
        return k * n_chunks * c < self.GRAM_COST * (c * h1 + n_chunks * h1 * h1)

    def regularizer(
        self, hnet, embs: Tensor, rows: Tensor | None, params: dict[str, Tensor] | None = None, *, form: str | None = None
    ) -> Tensor:
        """``output_regularizer(hnet(embs), self.at(rows))``, at ``params`` if given, in the
        cheaper ``form`` (``"direct"`` or ``"factored"``; ``None`` chooses by :meth:`uses_direct`)."""
        if form not in (None, "direct", "factored"):
            raise ValueError(f"form must be 'direct', 'factored' or None, got {form!r}.")
        last = hnet.layers[-1]
        if params is None:
            feats = hnet(embs, features=True)
            weight, bias = last.weight, last.bias
        else:
            feats = torch.func.functional_call(hnet, params, (embs,), {"features": True})
            prefix = f"layers.{len(hnet.layers) - 1}."
            weight, bias = params[prefix + "weight"], params[prefix + "bias"]
        rows = slice(None) if rows is None else rows
        k = len(embs)
        if form is None:
            form = "direct" if self.uses_direct(k) else "factored"
        if form == "direct":  # the chunks' outputs before the output map, against the targets'
            h = torch.addmm(bias, feats.flatten(0, 1), weight).view(k, *self._s2.shape)  # (k, K, C)
            value = _WeightedSquares.apply(h, self._targets(rows), self._s2)
        else:
            a = _augmented(feats)                       # (k, K, H+1)
            d = a - self._a[rows]                       # (k, K, H+1)
            dw = _augmented_weight(weight, bias) - self._w  # (H+1, C)
            gdd = _gram(self._bounds, self._seg_s2, dw, dw)         # (K, H+1, H+1)
            gdw = _gram(self._bounds, self._seg_s2, dw, self._w)    # (K, H+1, H+1)
            value = _quad(a, gdd, a) + 2 * _quad(a, gdw, d) + _quad(d, self._gww, d)
        return value / k

    @torch.no_grad()
    def _targets(self, rows) -> Tensor:
        """The snapshot's chunk outputs ``a*_j w*`` of the tasks at ``rows``, ``(k, K, C)``: made
        once for all tasks where they fit in :attr:`TARGET_CACHE_BYTES`, else for these rows."""
        if self._hstar is None and self._a.numel() // self._a.shape[-1] * self._w.shape[1] * 4 <= self.TARGET_CACHE_BYTES:
            self._hstar = self._a @ self._w
        if self._hstar is not None:
            return self._hstar[rows]
        return self._a[rows] @ self._w

    def nbytes(self) -> int:
        parts = (self._w, self._a, self._seg_s2, self._shift, self._gww)
        return sum(t.nbytes for t in parts if t is not None)

    _STATE = ("_w", "_a", "_seg_s2", "_shift", "_bounds")

    def state_dict(self) -> dict:
        return {"tasks": list(self.tasks), **{k.lstrip("_"): getattr(self, k) for k in self._STATE}}

    def load_state_dict(self, state: dict, model: HyperCLModel) -> None:
        self.tasks = list(state["tasks"])
        for k in self._STATE:
            setattr(self, k, state[k.lstrip("_")])
        dtype = self._shift.dtype if self._shift is not None else None
        if dtype is not None:  # checkpoints before 0.2 kept float64 copies, the layer tall
            self._w, self._a, self._seg_s2 = self._w.to(dtype), self._a.to(dtype), self._seg_s2.to(dtype)
            if self._w.shape[0] != self._a.shape[-1]:
                self._w = self._w.T.contiguous()
        self._derive()


class _WeightedSquares(torch.autograd.Function):
    """``sum(s2 * (h - target)^2)`` in three passes over ``h``, and one for its gradient
    (``2 s2 (h - target)``, kept from the forward pass), where autograd's chain of
    elementwise ops would take about ten."""

    @staticmethod
    def forward(ctx, h: Tensor, target: Tensor, s2: Tensor) -> Tensor:
        r = h - target
        q = r * s2
        ctx.save_for_backward(q)
        return torch.dot(r.flatten(), q.flatten())

    @staticmethod
    def backward(ctx, grad: Tensor):
        (q,) = ctx.saved_tensors
        return q * (2 * grad), None, None


def _quad(x: Tensor, g: Tensor, y: Tensor) -> Tensor:
    """``sum_{t,k} x[t,k]' g[k] y[t,k]`` for ``x, y (T, K, H)`` and ``g (K, H, H)``."""
    return ((x.unsqueeze(-2) @ g).squeeze(-2) * y).sum()


def _rows(snapshot: list[int], tasks: Sequence[int], like: Tensor | None) -> Tensor | None:
    """Positions of ``tasks`` in ``snapshot`` on ``like``'s device; ``None`` for all, in order."""
    missing = [t for t in tasks if t not in snapshot]
    if missing:
        raise ValueError(f"No regulariser targets for task(s) {missing}: the snapshot holds tasks {snapshot}.")
    rows = [snapshot.index(t) for t in tasks]
    if rows == list(range(len(snapshot))):
        return None
    return torch.tensor(rows, device=like.device)


def _augmented(features: Tensor) -> Tensor:
    """Features ``(..., H)`` with a trailing 1, so the bias joins the weight matrix."""
    return torch.cat([features, features.new_ones(*features.shape[:-1], 1)], -1)


def _augmented_weight(weight: Tensor, bias: Tensor) -> Tensor:
    """A :class:`~hypercl.hypernet.WideLinear`'s ``[V, b]'``: weight ``(H, C)``, bias ``(C,)``."""
    return torch.cat([weight, bias[None]], 0)  # (H+1, C)


def _segments(s2: Tensor) -> tuple[list[int], Tensor]:
    """Cut the ``C`` output units into intervals on which every chunk's ``s2`` is constant
    (the output map's scale changes only where a generated tensor ends). Returns the
    interval bounds and ``(K, m)``: each chunk's ``s2`` on each interval."""
    change = (s2[:, 1:] != s2[:, :-1]).any(0)
    bounds = [0, *(torch.nonzero(change).flatten() + 1).tolist(), s2.shape[1]]
    return bounds, s2[:, bounds[:-1]]


def _gram(bounds: list[int], weights: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``u diag(s2[k]) v'`` for wide ``u, v (H+1, C)`` and every chunk ``k``, ``(K, H+1, H+1)``,
    in one pass over their columns: a product per interval of :func:`_segments`, then their
    weighted sums per chunk. (``split``, not slicing: its backward is one concatenation,
    where each slice's would zero and copy a whole gradient.)"""
    sizes = [j - i for i, j in zip(bounds[:-1], bounds[1:])]
    us = u.split(sizes, dim=1)
    vs = us if v is u else v.split(sizes, dim=1)
    parts = torch.stack([a @ b.T for a, b in zip(us, vs)])  # (m, H+1, H+1)
    return (weights @ parts.flatten(1)).view(len(weights), *parts.shape[1:])  # (K, H+1, H+1)


TARGETS: dict[str, type] = {"stored": StoredTargets, "frozen": FrozenCopyTargets, "factored": FactoredTargets}
