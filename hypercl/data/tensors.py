"""An Avalanche dataset as tensors on a device: every sample transformed at most once.

An Avalanche dataset is a tree of subsets and concatenations over *leaf* datasets (a
``TensorDataset``, torchvision's ``MNIST``...), with transform groups on the way. The
:class:`DataCache` walks that tree once per dataset to find, for every sample, its leaf, its
row there and the transforms applied on the way up, then keeps per leaf:

- the raw rows (uint8 pixels stay uint8) where every transform is batchable
  (:func:`~hypercl.data.transforms.is_batchable`): mini-batches are transformed on the device;
- else the transformed samples, computed once per (leaf, transforms) and only for the rows
  asked for, where every transform is deterministic.

A dataset with a random transform, or whose samples the cache cannot reproduce exactly (it
checks a few against the dataset's own ``__getitem__``), gets a reason instead of tensors: its
caller keeps Avalanche's loader.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hypercl.data.transforms import apply, batch_form, flatten, is_batchable, is_random, known_random

N_CHECKED = 4
"""Samples of each dataset compared with the dataset's own ``__getitem__``."""

BATCH = 8192
"""Samples transformed at once where a leaf's rows are read as a batch (bounds the memory)."""


@dataclass
class Tensors:
    """A dataset's samples on a device: ``x`` (raw, before ``transform``), class targets ``y``
    and task labels ``t``, plus the task labels on the host (``t_host``) for batch planning."""

    x: Tensor
    y: Tensor
    t: Tensor
    t_host: np.ndarray
    transform: tuple[Callable, ...] = ()

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, idx: Tensor) -> Tensor:
        """Inputs of the samples at ``idx`` (a device tensor), transformed."""
        return apply(self.transform, self.x[idx])

    @staticmethod
    def cat(parts: Sequence[Tensors]) -> Tensors:
        if len(parts) == 1:
            return parts[0]
        same = all(p.transform == parts[0].transform and p.x.dtype == parts[0].x.dtype for p in parts)
        xs = [p.x if same else apply(p.transform, p.x) for p in parts]
        return Tensors(
            x=torch.cat(xs),
            y=torch.cat([p.y for p in parts]),
            t=torch.cat([p.t for p in parts]),
            t_host=np.concatenate([p.t_host for p in parts]),
            transform=parts[0].transform if same else (),
        )


@dataclass
class _Branch:
    """Samples of one dataset that come from one leaf through the same transforms."""

    leaf: object
    rows: np.ndarray  # rows in the leaf
    positions: np.ndarray  # positions in the dataset
    transforms: tuple[Callable, ...]  # x transforms, first applied first


class DataCache:
    """Datasets as :class:`Tensors` on ``device``, sharing the work per underlying dataset.

    Keeps at most ``max_bytes`` of underlying data (raw rows and transformed samples), dropping
    the least recently used first: a long stream of lazily loaded experiences (Permuted MNIST-100)
    holds only the recent ones, and the older ones are loaded again if asked for.
    """

    def __init__(self, device: torch.device | str, *, max_bytes: int = 4 * 2**30) -> None:
        self.device = torch.device(device)
        self.max_bytes = max_bytes
        self._raw: OrderedDict[int, tuple[object, Tensor]] = OrderedDict()
        self._done: OrderedDict[tuple, tuple[tuple, Tensor, np.ndarray]] = OrderedDict()

    def _used(self, cache: OrderedDict, key) -> None:
        """Mark ``key`` as just used, and drop the least recently used entries beyond ``max_bytes``."""
        cache.move_to_end(key)
        entries = [(c, k) for c in (self._raw, self._done) for k in c]
        total = sum(c[k][1].nbytes for c, k in entries)
        for c in (self._done, self._raw):  # transformed samples first: they are the dearer to hold
            while total > self.max_bytes and len(c) > (1 if c is cache else 0):
                oldest = next(iter(c))
                if c is cache and oldest == key:
                    break
                total -= c.pop(oldest)[1].nbytes

    def tensors(self, dataset) -> Tensors | str:
        """``dataset`` as tensors, or why it cannot be (then use Avalanche's loader)."""
        if not all(hasattr(dataset, a) for a in ("_flat_data", "targets", "targets_task_labels")):
            return f"{type(dataset).__name__} is not an Avalanche classification dataset with task labels"
        if len(dataset) == 0:
            return "the dataset is empty"
        flat = dataset._flat_data
        group = flat._transform_groups.current_group
        branches: list[_Branch] = []
        n = len(dataset)
        problem = _resolve(flat, np.arange(n), np.arange(n), (), group, branches)
        if problem:
            return problem
        parts, order = [], []
        for b in branches:
            got = self._branch(b)
            if isinstance(got, str):
                return got
            parts.append(got)
            order.append(b.positions)
        x, transform = _join(parts, order, n)
        y = torch.as_tensor(_ints(dataset.targets), device=self.device)
        t_host = _ints(dataset.targets_task_labels)
        out = Tensors(x=x, y=y, t=torch.as_tensor(t_host, device=self.device), t_host=t_host, transform=transform)
        return _check(dataset, out) or out

    # ------------------------------------------------------------------ per branch
    def _branch(self, b: _Branch) -> tuple[Tensor, tuple[Callable, ...]] | str:
        """``(x, transform)`` of a branch's rows: raw rows and their batch transform, or the
        transformed rows and no transform."""
        leaf_transforms = flatten(getattr(b.leaf, "transform", None))
        raw = _raw_tensor(b.leaf)
        problem = _random_transform(b, leaf_transforms)
        if problem:
            return problem
        if raw is not None and not leaf_transforms and all(is_batchable(t) for t in b.transforms):
            key = id(b.leaf)
            if key not in self._raw:
                self._raw[key] = (b.leaf, raw.to(self.device))
            self._used(self._raw, key)
            rows = torch.as_tensor(b.rows, device=self.device)
            return self._raw[key][1][rows], b.transforms
        return self._transformed(b), ()

    def _transformed(self, b: _Branch) -> Tensor:
        """The branch's samples through its transforms, each computed once per cache."""
        key = (id(b.leaf), tuple(id(t) for t in b.transforms))
        if key not in self._done:
            first = apply(b.transforms, b.leaf[int(b.rows[0])][0])
            store = torch.empty((len(b.leaf), *first.shape), dtype=first.dtype, device=self.device)
            self._done[key] = ((b.leaf, b.transforms), store, np.zeros(len(b.leaf), dtype=bool))
        self._used(self._done, key)
        _, store, filled = self._done[key]
        todo = np.unique(b.rows[~filled[b.rows]])
        if len(todo):
            store[torch.as_tensor(todo, device=self.device)] = _samples(b, todo).to(self.device)
            filled[todo] = True
        return store[torch.as_tensor(b.rows, device=self.device)]


def _samples(b: _Branch, rows: np.ndarray) -> Tensor:
    """The leaf's samples at ``rows`` through the branch's transforms: in batches where the
    leaf's rows can be read at once and every transform has a batch form, else one by one."""
    read = _row_reader(b.leaf)
    batched = [batch_form(t) for t in b.transforms]
    if read is not None and all(f is not None for f in batched):
        parts = np.split(rows, range(BATCH, len(rows), BATCH))
        xs = torch.cat([apply(batched, read(torch.as_tensor(part))) for part in parts])
        ends = (0, len(rows) - 1)  # the batch forms must give what the samples' own path gives
        if all(torch.equal(xs[k], apply(b.transforms, b.leaf[int(rows[k])][0])) for k in ends):
            return xs
    return torch.stack([apply(b.transforms, b.leaf[int(i)][0]) for i in rows])


def _row_reader(leaf) -> Callable[[Tensor], Tensor] | None:
    """A batch form of ``leaf[i][0]`` for leaves known to compute it from a row of their data:
    Avalanche's ``TensorMNIST`` (MNIST's uint8 pixels as floats in [0, 1], one channel; its
    per-sample ``__getitem__`` makes gathering Split MNIST's 70,000 samples take seconds)."""
    if type(leaf).__name__ == "TensorMNIST" and getattr(leaf, "transform", None) is None:
        data = leaf.data  # (N, 28, 28) uint8
        return lambda rows: data[rows].float().unsqueeze(1) / 255.0  # as TensorMNIST.__getitem__
    return None


def _random_transform(b: _Branch, leaf_transforms: list[Callable]) -> str | None:
    """Why a branch's samples change from draw to draw, if they do."""
    row = int(b.rows[0])
    for t in leaf_transforms:
        if known_random(t) is not False and is_random(lambda i: b.leaf[i][0], row):
            return f"its dataset's transform {t!r} is random (a new draw every epoch)"
    for k, t in enumerate(b.transforms):
        known = known_random(t)
        if known is None:
            known = is_random(t, apply(b.transforms[:k], b.leaf[row][0]))
        if known:
            return f"its transform {t!r} is random (a new draw every epoch)"
    return None


def _resolve(node, idx: np.ndarray, positions: np.ndarray, above: tuple, group: str, out: list[_Branch]) -> str | None:
    """Follow the samples ``idx`` of ``node`` (at ``positions`` of the dataset) down to their
    leaves; ``above`` holds the x transforms applied after ``node``'s."""
    from avalanche.benchmarks.utils.flat_data import FlatData

    if not isinstance(node, FlatData):
        out.append(_Branch(node, idx, positions, above))
        return None
    mine = []
    for groups in (getattr(node, "_frozen_transform_groups", None), getattr(node, "_transform_groups", None)):
        got = _x_transforms(groups, group)
        if isinstance(got, str):
            return got
        mine += got
    transforms = (*mine, *above)
    if node._indices is not None:
        idx = np.fromiter(node._indices, dtype=np.int64, count=len(node._indices))[idx]
    bounds = np.asarray(node._cumulative_sizes)
    which = np.searchsorted(bounds, idx, side="right")
    starts = np.concatenate([[0], bounds[:-1]])
    for d, child in enumerate(node._datasets):
        sel = which == d
        if sel.any():
            problem = _resolve(child, idx[sel] - starts[d], positions[sel], transforms, group, out)
            if problem:
                return problem
    return None


def _x_transforms(groups, group: str) -> list[Callable] | str:
    """The transforms a transform group applies to inputs, or why they cannot be separated."""
    from avalanche.benchmarks.utils.transforms import TupleTransform

    if groups is None:
        return []
    try:  # indexed as Avalanche does: DefaultTransformGroups is a defaultdict (any group)
        t = groups.transform_groups[group]
    except KeyError:
        t = None
    if t is None:
        return []
    if isinstance(t, TupleTransform):
        if any(x is not None for x in t.transforms[2:]):
            return f"a transform of the task labels ({t!r})"
        return flatten(t.transforms[0]) if t.transforms else []
    return f"a transform of whole samples ({t!r})"


def _raw_tensor(leaf) -> Tensor | None:
    """The inputs of a ``TensorDataset``-like leaf, whose samples are rows of its first tensor."""
    tensors = getattr(leaf, "tensors", None)
    if isinstance(tensors, (tuple, list)) and tensors and isinstance(tensors[0], Tensor):
        if len(tensors[0]) == len(leaf):
            return tensors[0]
    return None


def _join(parts: list[tuple[Tensor, tuple]], order: list[np.ndarray], n: int) -> tuple[Tensor, tuple[Callable, ...]]:
    """The branches' inputs in dataset order, sharing one batch transform where they can."""
    if len(parts) == 1 and np.array_equal(order[0], np.arange(n)):
        return parts[0]
    same = all(t == parts[0][1] and x.dtype == parts[0][0].dtype for x, t in parts)
    xs = [x if same else apply(t, x) for x, t in parts]
    out = xs[0].new_empty((n, *xs[0].shape[1:]))
    for x, pos in zip(xs, order):
        out[torch.as_tensor(pos, device=out.device)] = x
    return out, parts[0][1] if same else ()


def _ints(attribute) -> np.ndarray:
    data = getattr(attribute, "data", attribute)
    if isinstance(data, Tensor):
        return data.cpu().numpy().astype(np.int64)
    values = _flat_ints(data)
    if values is not None and len(values) == len(attribute):
        return values
    return np.fromiter((int(v) for v in attribute), dtype=np.int64, count=len(attribute))


def _flat_ints(node) -> np.ndarray | None:
    """The values of an attribute's tree of Avalanche ``FlatData`` (subsets and concatenations
    over attributes, lists, tensors and constants) at once, as :func:`_resolve` follows inputs; ``None``
    for a leaf of another kind (then each value is read through the tree, slowly)."""
    from avalanche.benchmarks.utils.data_attribute import DataAttribute
    from avalanche.benchmarks.utils.flat_data import ConstantSequence, FlatData

    if isinstance(node, DataAttribute):
        return _flat_ints(node.data)
    if isinstance(node, ConstantSequence):
        return np.full(len(node), int(node._constant_value), dtype=np.int64)
    if isinstance(node, Tensor):
        return node.cpu().numpy().astype(np.int64).reshape(-1)
    if isinstance(node, (list, tuple, np.ndarray)):
        return np.asarray(node, dtype=np.int64).reshape(-1)
    if not isinstance(node, FlatData):
        return None
    parts = [_flat_ints(d) for d in node._datasets]
    if any(p is None for p in parts):
        return None
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if node._indices is not None:
        values = values[np.fromiter(node._indices, dtype=np.int64, count=len(node._indices))]
    return values


def _check(dataset, out: Tensors) -> str | None:
    """Compare a few samples with what the dataset's own ``__getitem__`` gives: the device path
    must never change what a strategy sees."""
    n = len(dataset)
    picks = sorted({0, n - 1, *np.random.default_rng(n).integers(0, n, N_CHECKED - 2).tolist()})
    idx = torch.as_tensor(picks, device=out.x.device)
    xs = out.inputs(idx).cpu()
    ys, ts = out.y[idx].cpu(), out.t[idx].cpu()
    for k, i in enumerate(picks):
        with torch.random.fork_rng(devices=[]):
            elem = dataset[i]
        if len(elem) < 3 or not isinstance(elem[0], Tensor):
            return "its samples are not (input tensor, target, task label) tuples"
        x, y, t = elem[0], int(elem[1]), int(elem[2])
        if x.shape != xs[k].shape or x.dtype != xs[k].dtype or not torch.equal(x, xs[k]):
            return f"sample {i} would differ from the dataset's own (its transforms are not reproduced exactly)"
        if y != int(ys[k]) or t != int(ts[k]):
            return f"sample {i}'s labels differ from the dataset's targets/targets_task_labels attributes"
    return None
