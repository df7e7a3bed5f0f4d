"""Which of a target's parameters a hypernetwork generates, and how a flat vector maps onto them."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: What to generate: ``None`` (every parameter), glob patterns over parameter names
#: (``"fc3.*"``), or a predicate ``(name, parameter) -> bool``.
Selection = None | str | Sequence[str] | Callable[[str, nn.Parameter], bool]


@dataclass(frozen=True)
class WeightLayout:
    """Names and shapes of the generated parameters, in the target's own order.

    The flat weight vector of length ``n_weights`` is the concatenation of the
    flattened tensors in ``names`` order.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)

    @property
    def n_weights(self) -> int:
        return sum(self.numels)

    @classmethod
    def from_module(cls, target: nn.Module, select: Selection = None) -> WeightLayout:
        """Layout of the parameters of ``target`` picked by ``select``.

        Raises:
            ValueError: the target has no parameters, or ``select`` picks none.
        """
        params = list(target.named_parameters())
        if not params:
            raise ValueError(
                f"The target {type(target).__name__} has no parameters, so there is nothing "
                "for a hypernetwork to generate. Pass a module with at least one nn.Parameter."
            )
        picked = [(n, p) for n, p in params if _is_selected(n, p, select)]
        if not picked:
            names = ", ".join(n for n, _ in params)
            raise ValueError(
                f"generate={select!r} selects none of the target's parameters. "
                f"Its parameters are: {names}. Use glob patterns over these names "
                "(e.g. 'fc3.*'), a predicate (name, param) -> bool, or None for all."
            )
        return cls(tuple(n for n, _ in picked), tuple(p.shape for _, p in picked))

    def flatten(self, weights: dict[str, Tensor]) -> Tensor:
        """Concatenate ``weights`` (keyed by ``names``) into a flat vector."""
        return torch.cat([weights[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of the flat vector ``(n_weights,)`` keyed by parameter name."""
        chunks = flat.split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}


def _is_selected(name: str, param: nn.Parameter, select: Selection) -> bool:
    if select is None:
        return True
    if callable(select):
        return bool(select(name, param))
    patterns = [select] if isinstance(select, str) else list(select)
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
