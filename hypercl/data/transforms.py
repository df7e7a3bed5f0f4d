"""Per-sample transforms, sorted by what a device-resident data path may do with them.

- *Batchable*: the same arithmetic on one sample and on a batch (``Standardize``, torchvision's
  ``Normalize`` on tensors). The raw data (uint8 pixels) stay on the device and every gathered
  mini-batch is transformed there.
- *Deterministic*: the same output for the same sample every time (``ToTensor``, ``Pad``,
  ``Resize``, Avalanche's ``PixelsPermutation``...). Applied once per sample, then cached.
- *Random* (``RandomCrop``, ``ColorJitter``...): a fresh draw every epoch. Caching would change
  what training sees, so such data keep Avalanche's own loader; batch augmentation on the
  device is :class:`hypercl.augment.BatchAugment`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor


class Standardize:
    """uint8 data to float: ``(x / 255 - mean) / std``, per channel (dimension ``channel_dim``
    of a sample, counted from its end) or for all values (scalar ``mean`` and ``std``).

    Works on one sample and on a batch alike, so data kept as uint8 (4 times less memory than
    float32, on the device or off it) are standardised on the mini-batch, with bit-for-bit the
    values a per-sample transform gives.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float], *, channel_dim: int = -3) -> None:
        self.mean = tuple(float(m) for m in np.atleast_1d(mean))
        self.std = tuple(float(s) for s in np.atleast_1d(std))
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std need one value per channel and std > 0; got {mean}, {std}.")
        self.channel_dim = channel_dim
        self._consts: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        mean, std = self._constants(x)
        return (x.float() / 255 - mean) / std

    def _constants(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.device, x.dim())
        if key not in self._consts:
            shape = [1] * x.dim()
            if len(self.mean) > 1:  # per channel
                shape[self.channel_dim] = len(self.mean)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
            self._consts[key] = mean, std
        return self._consts[key]

    def __getstate__(self) -> dict:  # the constants are a cache, rebuilt where the copy runs
        return {**self.__dict__, "_consts": {}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Standardize) and (self.mean, self.std, self.channel_dim) == (
            other.mean, other.std, other.channel_dim)  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.mean, self.std, self.channel_dim))

    def __repr__(self) -> str:
        return f"Standardize(mean={self.mean}, std={self.std})"


def flatten(transform) -> list[Callable]:
    """The callables a transform applies in order (``Compose`` and nesting unrolled)."""
    if transform is None:
        return []
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)) and type(transform).__name__ == "Compose":
        return [t for part in inner for t in flatten(part)]
    return [transform]


_RANDOM_NAMES = ("ColorJitter", "RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix", "GaussianBlur",
                 "ElasticTransform", "GaussianNoise")  # fmt: skip
_DETERMINISTIC_NAMES = ("ToTensor", "PILToTensor", "ToImage", "ToDtype", "ConvertImageDtype", "Normalize", "Pad",
                        "Resize", "CenterCrop", "Grayscale", "PixelsPermutation", "ToPILImage")  # fmt: skip


def is_batchable(t: Callable) -> bool:
    """Whether ``t`` gives the same result on a batch as on each of its samples."""
    return isinstance(t, Standardize) or (type(t).__name__ == "Normalize" and not getattr(t, "inplace", False))


def batch_form(t: Callable) -> Callable | None:
    """``t`` for a batch of samples (stacked on a new first dimension), each given exactly what
    ``t`` gives it alone; ``None`` where that form is not known."""
    if is_batchable(t):
        return t
    name = type(t).__name__
    if name == "Pad" and getattr(t, "padding_mode", None) == "constant":
        return t  # torchvision pads a tensor's last two dimensions, whatever comes before them
    if name == "PixelsPermutation":  # Avalanche's: sample.view(-1)[permutation].view(sample.shape)
        perm = torch.as_tensor(t.permutation)
        return lambda x: x.flatten(1)[:, perm].view(x.shape)
    return None


def known_random(t: Callable) -> bool | None:
    """Whether ``t`` is random, judged by its class (torchvision's and Avalanche's transforms);
    ``None`` for a transform this module does not know."""
    name = type(t).__name__
    if name.startswith("Random") or name in _RANDOM_NAMES:
        return True
    if name in _DETERMINISTIC_NAMES or is_batchable(t):
        return False
    return None


def is_random(t: Callable, sample) -> bool:
    """Whether ``t`` may give another output for the same input: by its class where it is known
    (:func:`known_random`), else by applying it to ``sample`` under two random states."""
    known = known_random(t)
    if known is not None:
        return known
    outs = []
    for seed in (1, 2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = random.getstate(), np.random.get_state()
            random.seed(seed)
            np.random.seed(seed)
            try:
                outs.append(t(sample))
            finally:
                random.setstate(state[0])
                np.random.set_state(state[1])
    return not _same(*outs)


def _same(a, b) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a == b


def apply(transforms: Sequence[Callable], x):
    for t in transforms:
        x = t(x)
    return x
