"""Mini-batches gathered by index from tensors on the device, drawn as Avalanche draws them.

A :class:`DeviceLoader` stands in for one of Avalanche's data loaders (``TaskBalancedDataLoader``,
``ReplayDataLoader``, ``SingleDatasetDataLoader``... or a plain ``DataLoader``). It asks the
original's own samplers for the indices (over a stand-in dataset whose items are their
indices, so no sample is loaded), in the same order and from the same random draws, so the
batches and the random state after them are the ones the original would give. Per epoch the
indices cross to the device once; per step a batch is ``x[idx]``, ``y[idx]``, ``t[idx]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from hypercl.data.tensors import DataCache, Tensors

_GROUPS = "_hypercl_task_groups"


@dataclass(frozen=True)
class TaskGroups:
    """The tasks of a mini-batch, known on the host: ``tasks`` (sorted), how many samples each
    has (``sizes``), and for a batch of several tasks the permutation ``order`` (on the device)
    that groups its samples by task, and ``restore``, its inverse."""

    tasks: tuple[int, ...]
    sizes: tuple[int, ...]
    order: Tensor | None = None
    restore: Tensor | None = None


def attach_groups(task_labels: Tensor, groups: TaskGroups) -> Tensor:
    """Let ``task_labels`` carry its :class:`TaskGroups` (read back by :func:`task_groups`)."""
    setattr(task_labels, _GROUPS, groups)
    return task_labels


def task_groups(task_labels) -> TaskGroups | None:
    """The :class:`TaskGroups` a :class:`DeviceLoader` attached to a batch's task labels, if any:
    a model reads the batch's tasks from it without a device-to-host copy."""
    return getattr(task_labels, _GROUPS, None)


class _Positions(torch.utils.data.Dataset):
    """A stand-in dataset whose item ``i`` is ``i``: a loader over it yields index batches."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def __getitems__(self, idx: list[int]) -> Tensor:
        return torch.as_tensor(idx, dtype=torch.long)


def _identity(batch):
    return batch


def index_plan(loader) -> tuple[list, Callable[[], Iterator[Tensor]]] | str:
    """The datasets ``loader`` draws from (their concatenation is what its indices address) and
    a function giving one epoch's index batches, or why the loader is not supported."""
    from avalanche.benchmarks.utils.data_loader import (
        MultiDatasetDataLoader,
        MultiDatasetSampler,
        _make_data_loader_with_batched_sampler,
    )

    if isinstance(loader, MultiDatasetDataLoader):
        if loader.never_ending:
            return f"{type(loader).__name__} never ends an epoch"
        args = {**loader.loader_kwargs, "collate_fn": _identity, "num_workers": 0, "pin_memory": False}
        args.pop("persistent_workers", None)
        total = sum(len(d) for d in loader.datasets)

        def epoch() -> Iterator[Tensor]:  # Avalanche's MultiDatasetDataLoader._get_loader, on indices
            samplers = loader._create_samplers(
                loader.datasets, loader.batch_sizes, loader.distributed_sampling, loader.loader_kwargs
            )
            sampler = MultiDatasetSampler(
                loader.datasets, samplers, termination_dataset_idx=loader.termination_dataset,
                oversample_small_datasets=loader.oversample_small_datasets, never_ending=False,
            )  # fmt: skip
            return iter(_make_data_loader_with_batched_sampler(_Positions(total), sampler, args))

        return list(loader.datasets), epoch
    if type(loader) is DataLoader:
        if loader.batch_sampler is None:
            return "the DataLoader does not batch (batch_size=None)"

        def epoch() -> Iterator[Tensor]:
            positions = _Positions(len(loader.dataset))
            return iter(DataLoader(positions, batch_sampler=loader.batch_sampler, generator=loader.generator,
                                   collate_fn=_identity))  # fmt: skip

        return [loader.dataset], epoch
    return f"{type(loader).__name__} is not one of Avalanche's data loaders"


class DeviceLoader:
    """Batches ``[x, y, t]`` of ``data`` (on its device) in the order ``epoch()`` gives.

    Args:
        data: the samples, already on the device.
        epoch: a function returning one epoch's index batches (CPU ``LongTensor``\\ s).
        length: batches per epoch (what ``len()`` reports to loggers, budgets and bars).
        lazy: draw each index batch when it is asked for, not the whole epoch at its start:
            exact where the samplers draw random numbers inside an epoch (several datasets,
            the smaller ones restarted), at one small host-to-device copy per batch.
        source: the loader this one replaces; attributes it lacks are looked up there.
    """

    def __init__(
        self, data: Tensors, epoch: Callable[[], Iterator[Tensor]], length: int, *, lazy: bool = False, source=None
    ) -> None:
        self.data, self.epoch, self.length, self.lazy, self.source = data, epoch, length, lazy, source
        self.device = data.y.device
        self._single = len(data) > 0 and bool((data.t_host == data.t_host[0]).all())

    def __len__(self) -> int:
        return self.length

    def __getattr__(self, name: str):  # dataset, batch_size... are the original loader's
        if name == "source" or self.source is None:
            raise AttributeError(name)
        return getattr(self.source, name)

    def __iter__(self) -> Iterator[list[Tensor]]:
        if self.lazy:
            yield from self._lazy()
            return
        batches = list(self.epoch())
        if not batches:
            return
        sizes = [len(b) for b in batches]
        flat = torch.cat(batches)
        groups = self._groups(flat.numpy(), sizes)
        idx_all = _to_device(flat, self.device)  # the epoch's indices: one copy
        start = 0
        for size, group in zip(sizes, groups):
            idx = idx_all[start : start + size]
            start += size
            yield self._batch(idx, group)

    def _lazy(self) -> Iterator[list[Tensor]]:
        """One index batch at a time: the samplers draw when Avalanche's would."""
        for b in self.epoch():
            yield self._batch(_to_device(b, self.device), self._groups(b.numpy(), [len(b)])[0])

    def _batch(self, idx: Tensor, group: TaskGroups) -> list[Tensor]:
        t = attach_groups(self.data.t[idx], group)
        return [self.data.inputs(idx), self.data.y[idx], t]

    def _groups(self, flat: np.ndarray, sizes: list[int]) -> list[TaskGroups]:
        """Each batch's :class:`TaskGroups`, computed on the host for the whole epoch."""
        t = self.data.t_host[flat]
        if self._single:
            task = int(t[0])
            return [TaskGroups((task,), (n,)) for n in sizes]
        out, orders, restores, mixed = [], [], [], []
        start = 0
        for n in sizes:
            tb = t[start : start + n]
            start += n
            if tb.min() == tb.max():
                out.append(TaskGroups((int(tb[0]),), (n,)))
                continue
            order = np.argsort(tb, kind="stable")
            tasks, counts = np.unique(tb[order], return_counts=True)
            mixed.append(len(out))
            out.append(TaskGroups(tuple(tasks.tolist()), tuple(counts.tolist())))
            orders.append(order)
            restores.append(np.argsort(order))
        if mixed:  # the permutations of all mixed batches cross to the device at once
            order_dev = _to_device(torch.as_tensor(np.concatenate(orders)), self.device)
            restore_dev = _to_device(torch.as_tensor(np.concatenate(restores)), self.device)
            start = 0
            for i in mixed:
                n = sum(out[i].sizes)
                out[i] = TaskGroups(out[i].tasks, out[i].sizes, order_dev[start : start + n], restore_dev[start : start + n])
                start += n
        return out


def _to_device(idx: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        idx = idx.pin_memory()  # so the copy is asynchronous
    return idx.to(device, non_blocking=True)


def device_loader(loader, cache: DataCache) -> DeviceLoader | str:
    """``loader`` as a :class:`DeviceLoader` over ``cache``'s device, or why it cannot be."""
    plan = index_plan(loader)
    if isinstance(plan, str):
        return plan
    datasets, epoch = plan
    parts = []
    for d in datasets:
        got = cache.tensors(d)
        if isinstance(got, str):
            return got
        parts.append(got)
    # One dataset: its sampler draws only when the epoch starts, so the whole epoch's indices
    # can be drawn then. Several: smaller ones restart (and may draw) inside the epoch.
    return DeviceLoader(Tensors.cat(parts), epoch, len(loader), lazy=len(datasets) > 1, source=loader)
