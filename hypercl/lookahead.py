"""The optimizer's candidate step, for the regulariser's lookahead (theta + delta theta)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer


@torch.no_grad()
def candidate_step(optimizer: Optimizer, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> list[Tensor]:
    """The update ``optimizer.step()`` would apply to ``params`` given ``grads``.

    Reads the optimizer's state without changing it. Parameters without a gradient
    or outside the optimizer get a zero step.

    Supports ``SGD`` (momentum, dampening, Nesterov, weight decay), ``Adam`` and
    ``AdamW`` (weight decay, AMSGrad).

    Raises:
        ValueError: another optimizer, or ``maximize=True``.
    """
    if not isinstance(optimizer, (SGD, Adam)):
        raise ValueError(
            f"lookahead needs the candidate step of the optimizer, which hypercl computes for "
            f"SGD, Adam and AdamW; got {type(optimizer).__name__}. Use one of those or set "
            "lookahead=False."
        )
    group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
    steps = []
    for p, g in zip(params, grads):
        group = group_of.get(p)
        if g is None or group is None:
            steps.append(torch.zeros_like(p))
            continue
        if group.get("maximize", False):
            raise ValueError("lookahead does not support maximize=True optimizers.")
        state = optimizer.state.get(p, {})
        if isinstance(optimizer, SGD):
            steps.append(_sgd_step(p, g, group, state))
        else:
            decoupled = isinstance(optimizer, AdamW) or group.get("decoupled_weight_decay", False)
            steps.append(_adam_step(p, g, group, state, decoupled=decoupled))
    return steps


def _sgd_step(p: Tensor, g: Tensor, group: dict, state: dict) -> Tensor:
    if group["weight_decay"]:
        g = g + group["weight_decay"] * p
    momentum = group["momentum"]
    if momentum:
        buf = state.get("momentum_buffer")
        buf = g if buf is None else momentum * buf + (1 - group["dampening"]) * g
        g = g + momentum * buf if group["nesterov"] else buf
    return -group["lr"] * g


def _adam_step(p: Tensor, g: Tensor, group: dict, state: dict, *, decoupled: bool) -> Tensor:
    beta1, beta2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    if wd and not decoupled:
        g = g + wd * p
    m = state["exp_avg"] * beta1 + (1 - beta1) * g if "exp_avg" in state else (1 - beta1) * g
    v = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g if "exp_avg_sq" in state else (1 - beta2) * g * g
    if group.get("amsgrad", False) and "max_exp_avg_sq" in state:
        v = torch.maximum(state["max_exp_avg_sq"], v)
    bias1, bias2 = _bias_corrections(state.get("step"), beta1, beta2, p)
    denom = (v / bias2).sqrt() + group["eps"]
    delta = -lr * (m / bias1) / denom
    if wd and decoupled:
        delta = delta - lr * wd * p
    return delta


def _bias_corrections(step, beta1: float, beta2: float, p: Tensor) -> tuple:
    """Adam's ``1 - beta ** (step + 1)`` for the step about to be taken. A step kept beside the
    parameter (fused Adam keeps it on the GPU) stays a tensor: reading it on the host would stall
    the device at every step. Computed in float64, as Python floats would be, then rounded once
    to the parameter's dtype."""
    if step is None:
        return 1 - beta1, 1 - beta2
    if not isinstance(step, Tensor) or step.device != p.device:  # on the host already
        step = float(step) + 1
        return 1 - beta1**step, 1 - beta2**step
    step = step.to(device=p.device, dtype=torch.float64) + 1
    ones = torch.ones((), dtype=torch.float64, device=p.device)
    return ((ones - beta1**step).to(p.dtype), (ones - beta2**step).to(p.dtype))
