"""The random state a run draws from: saved and restored whole (checkpoints, evaluation)."""

from __future__ import annotations

import random

import numpy as np
import torch
from avalanche.core import SupervisedPlugin


def rng_state() -> dict:
    """The state of every random number generator a run draws from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},  # fmt: skip
        "random": list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EvalKeepsRandomState(SupervisedPlugin):
    """Evaluation leaves the random state as it found it.

    Iterating a ``DataLoader`` draws its worker seed from torch's global generator, and
    models may draw in evaluation too; without this plugin, how often a run is evaluated
    changes the shuffles and draws of its training. With it, a run that evaluates the whole
    stream after every experience (or every epoch, ``eval_every``) trains exactly as one that
    never evaluates. :class:`~hypercl.HyperCL` includes it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._saved: list[dict] = []  # a stack: periodic evaluation runs inside training

    def before_eval(self, strategy, **kwargs) -> None:
        self._saved.append(rng_state())

    def after_eval(self, strategy, **kwargs) -> None:
        if self._saved:
            set_rng_state(self._saved.pop())
