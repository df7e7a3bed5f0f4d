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
