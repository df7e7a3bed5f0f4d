"""Target networks from the paper, written as ordinary ``nn.Module``s."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected network: flatten, hidden layers with an activation, linear output.

    The paper's Split MNIST target is ``MLP(784, (400, 400), 2)`` and its Permuted MNIST
    target ``MLP(1024, (1000, 1000), 10)`` on 28x28 images padded to 32x32.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: tuple[int, ...] = (400, 400),
        out_features: int = 10,
        *,
        activation: type[nn.Module] = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dims = (in_features, *hidden, out_features)
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b, device=device, dtype=dtype))
            if i < len(dims) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        if math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"MLP expects inputs of {self.in_features} features per sample, got shape "
                f"{tuple(x.shape)}. Set in_features to {math.prod(x.shape[1:])} or resize the inputs."
            )
        return self.net(x)


class _BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; the shortcut subsamples and zero-pads channels
    where the shape changes (He et al.'s option A: no parameters, as in CIFAR ResNets)."""

    def __init__(self, c_in: int, c_out: int, stride: int, **factory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False, **factory)
        self.bn1 = nn.BatchNorm2d(c_out, **factory)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False, **factory)
        self.bn2 = nn.BatchNorm2d(c_out, **factory)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            short = nn.functional.pad(short, (0, 0, 0, 0, 0, self.pad))
        return torch.relu(out + short)


class ResNet(nn.Module):
    """CIFAR ResNet (He et al., 2016, section 4.2): a 3x3 conv, three stages of
    ``blocks`` basic blocks with 16, 32 and 64 channels, global average pooling, linear.

    ``ResNet(blocks=5)`` is ResNet-32 (0.46 M parameters with 10 outputs), the paper's
    Split CIFAR target. Batch-norm scales and shifts are ordinary parameters, so a
    hypernetwork generates them; :class:`~hypercl.model.HyperCLModel` keeps the running
    statistics per task. ``head`` is the last layer (replace it by ``nn.Identity()`` for
    the ``features`` output of size 64).
    """

    def __init__(
        self,
        out_features: int = 10,
        *,
        blocks: int = 5,
        in_channels: int = 3,
        width: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1 (5 gives ResNet-32), got {blocks}.")
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False, **factory)
        self.bn = nn.BatchNorm2d(width, **factory)
        layers, c = [], width
        for stage in range(3):
            c_out = width * 2**stage
            for b in range(blocks):
                layers.append(_BasicBlock(c, c_out, 2 if stage and not b else 1, **factory))
                c = c_out
        self.blocks = nn.Sequential(*layers)
        self.features = c
        self.head = nn.Linear(c, out_features, **factory)
        for m in self.modules():  # He init for the convs, as the CIFAR ResNets
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(torch.relu(self.bn(self.conv(x))))  # (B, 64, 8, 8)
        return self.head(h.mean((2, 3)))


def resnet32(out_features: int = 10, **kwargs) -> ResNet:
    """ResNet-32: three stages of 5 basic blocks."""
    return ResNet(out_features, blocks=5, **kwargs)


class ZenkeNet(nn.Module):
    """The CNN of Zenke et al. (2017) used for Split CIFAR-10/100 by von Oswald et al.:
    conv 32, conv 32, max-pool, dropout, conv 64, conv 64, max-pool, dropout, FC 512,
    dropout, linear head (1.28 M parameters with 10 outputs). The first conv of each pair
    pads ("same"), the second does not ("valid"), as in the original Keras model.
    """

    def __init__(
        self,
        out_features: int = 10,
        *,
        in_channels: int = 3,
        image_size: int = 32,
        dropout: float = 0.25,
        fc_dropout: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, **factory)
        self.conv2 = nn.Conv2d(32, 32, 3, **factory)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, **factory)
        self.conv4 = nn.Conv2d(64, 64, 3, **factory)
        side = ((image_size - 2) // 2 - 2) // 2
        if side < 1:
            raise ValueError(f"ZenkeNet needs images of at least 10x10 pixels, got {image_size}.")
        self.fc = nn.Linear(64 * side * side, 512, **factory)
        self.head = nn.Linear(512, out_features, **factory)
        self.drop, self.fc_drop = nn.Dropout(dropout), nn.Dropout(fc_dropout)
        self.features = 512

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        h = self.drop(nn.functional.max_pool2d(h, 2))
        h = torch.relu(self.conv4(torch.relu(self.conv3(h))))
        h = self.drop(nn.functional.max_pool2d(h, 2))
        return self.head(self.fc_drop(torch.relu(self.fc(h.flatten(1)))))
