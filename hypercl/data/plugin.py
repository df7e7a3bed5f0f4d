"""``DeviceData``: every Avalanche strategy's mini-batches from tensors on its device."""

from __future__ import annotations

import warnings

from avalanche.core import SupervisedPlugin

from hypercl.data.loaders import DeviceLoader, device_loader
from hypercl.data.tensors import DataCache


class DeviceData(SupervisedPlugin):
    """Serve a strategy's training and evaluation mini-batches from tensors on its device.

    Once per experience the data become tensors on ``strategy.device`` (uint8 stays uint8;
    deterministic transforms are applied once per sample of each underlying dataset and
    cached; see :mod:`hypercl.data.tensors`); every mini-batch is then gathered by index
    (``x[idx]``): no per-sample ``__getitem__``, no collation, no worker processes, and one
    host-to-device copy of indices per epoch. Batches come in the order Avalanche's own loader
    would draw them, from the same random draws (task-balanced batches, Replay's current plus
    memory batches, Cumulative's growing data, shuffling), so with the same seed a run is the
    run Avalanche's loader gives; only where a loader re-draws a small dataset inside an epoch
    (Replay's memory) are that epoch's draws made at its start.

    A dataset with a random per-sample transform (``RandomCrop``...), or one this path cannot
    reproduce exactly, keeps Avalanche's loader, with a one-line warning saying why. For
    random augmentation on the device use :class:`hypercl.augment.BatchAugment`.

    Works with any Avalanche ``SupervisedTemplate``; put it before other plugins that wrap the
    data loader (``hypercl.Checkpoint`` is handled either way).

    Args:
        eval: serve evaluation batches too.
        max_bytes: underlying data kept on the device at most (least recently used dropped first).
    """

    def __init__(self, *, eval: bool = True, max_bytes: int = 4 * 2**30) -> None:
        super().__init__()
        self.eval, self.max_bytes = eval, max_bytes
        self.cache: DataCache | None = None
        self._kept = None  # the loader of this experience that stays Avalanche's
        self._told: set[str] = set()

    def _convert(self, strategy, loader, *, training: bool = True):
        if isinstance(loader, DeviceLoader) or (training and loader is self._kept):
            return loader
        if self.cache is None or self.cache.device != strategy.device:
            self.cache = DataCache(strategy.device, max_bytes=self.max_bytes)
        got = device_loader(loader, self.cache)
        if isinstance(got, str):
            if got not in self._told:
                self._told.add(got)
                warnings.warn(f"DeviceData: keeping Avalanche's data loader because {got}.", stacklevel=2)
            if training:
                self._kept = loader
            return loader
        return got

    def before_training_epoch(self, strategy, **kwargs) -> None:
        from hypercl.checkpoint import _TrackedLoader

        wrapper = strategy.dataloader if isinstance(strategy.dataloader, _TrackedLoader) else None
        if wrapper is not None:
            wrapper.loader = self._convert(strategy, wrapper.loader)
        else:
            strategy.dataloader = self._convert(strategy, strategy.dataloader)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self._kept = None

    def before_eval_exp(self, strategy, **kwargs) -> None:
        if self.eval:
            strategy.dataloader = self._convert(strategy, strategy.dataloader, training=False)
