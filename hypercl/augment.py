"""Data augmentation applied to whole training mini-batches, on the device they live on."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor


def random_crop_flip(x: Tensor, *, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Random ``padding``-pixel shifts (zero-padded crops of the original size) and random
    horizontal flips of a batch of images ``(B, C, H, W)``, each image drawn independently:
    torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``, batched."""
    b, _, h, w = x.shape
    # Drawn where the batch lives (no host round trip); ``generator`` must be on that device.
    draw = lambda high: torch.randint(0, high, (b,), generator=generator, device=x.device)  # noqa: E731
    padded = torch.nn.functional.pad(x, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    rows = draw(2 * padding + 1)[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = draw(2 * padding + 1)[:, None] + torch.arange(w, device=x.device)  # (B, W)
    if flip:
        mirrored = draw(2).bool()
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class BatchAugment(SupervisedPlugin):
    """Augment every training mini-batch with :func:`random_crop_flip` (the paper's
    augmentation for its ResNet on CIFAR). Evaluation batches are left alone.

    One vectorised gather per batch instead of per-sample transforms in the data loader,
    so it costs little next to the step. Works with any Avalanche strategy, so baselines
    see the same augmentation. Draws from the batch's device's global generator (seeded runs repeat).
    """

    def __init__(self, *, padding: int = 4, flip: bool = True) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}.")
        self.padding, self.flip = padding, flip

    def before_forward(self, strategy, **kwargs) -> None:
        x = strategy.mbatch[0]
        if x.dim() != 4:
            raise ValueError(
                f"BatchAugment crops and flips images (B, C, H, W), got inputs of shape "
                f"{tuple(x.shape)}. Use it with image benchmarks only."
            )
        strategy.mbatch[0] = random_crop_flip(x, padding=self.padding, flip=self.flip)
