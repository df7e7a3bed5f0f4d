"""Speed-ups that change no result: the fastest Adam, and no denormal arithmetic on CPUs.

Found with the profiler (``benchmarks/speed.py``): on x86 CPUs, the hypernetwork's backward
matrix products ran 5-10 times slower than their shapes warrant, because the gradients reaching
its wide output layer are mostly denormal floats (below 1.2e-38), which x86 handles in
microcode. Flushing them to zero (``torch.set_flush_denormal``) made a Split MNIST training
step 1.7 times faster; it changes values only below 1.2e-38.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.optim import Adam


def adam(params: Iterable[Tensor], **kwargs) -> Adam:
    """``torch.optim.Adam(params, **kwargs)`` with ``fused=True`` where this PyTorch supports
    it (CPU from 2.4, CUDA): one kernel for all parameters instead of a loop over them."""
    params = list(params)
    try:
        return Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older PyTorch, or a device without fused Adam
        return Adam(params, **kwargs)


def denormals_flushed() -> bool:
    """Whether this thread's CPU arithmetic flushes denormal floats to zero right now."""
    tiny = torch.tensor([1e-39])  # a denormal float32
    return (tiny * 1.0).item() == 0.0


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Let glibc's ``malloc`` keep freed memory for reuse instead of returning it to the system.

    A training step allocates and frees tensors of a few MB; by default glibc gives blocks that
    large back to the system when they are freed (``mmap``/``munmap``, heap trimming), so every
    step pays page faults to get them again: 25-30 % of a HyperCL step on a 2-core x86 CPU
    (``benchmarks/speed.py``). Raising the thresholds keeps them mapped (the process's resident
    memory stays at its peak). Process-wide and permanent; ``hypercl-bench`` and
    ``benchmarks/speed.py`` call it for every strategy alike. Returns whether it applied (glibc
    only; elsewhere, e.g. macOS, it does nothing).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return False
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


class FlushDenormals(SupervisedPlugin):
    """Flush denormal floats to zero while an Avalanche strategy trains, then restore the
    previous setting (``torch.set_flush_denormal``; a no-op where the CPU lacks it)."""

    def __init__(self) -> None:
        super().__init__()
        self._before: bool | None = None

    def before_training(self, strategy, **kwargs) -> None:
        self._before = denormals_flushed()
        torch.set_flush_denormal(True)

    def after_training(self, strategy, **kwargs) -> None:
        if self._before is not None:
            torch.set_flush_denormal(self._before)
            self._before = None
