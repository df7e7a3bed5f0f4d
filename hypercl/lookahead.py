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
    steps: list[Tensor | None] = [None] * len(params)
    adam: dict[int, list[int]] = {}  # Adam's steps are made per group, for all its tensors at once
    for i, (p, g) in enumerate(zip(params, grads)):
        group = group_of.get(p)
        if g is None or group is None:
            steps[i] = torch.zeros_like(p)
            continue
        if group.get("maximize", False):
            raise ValueError("lookahead does not support maximize=True optimizers.")
        if isinstance(optimizer, SGD):
            steps[i] = _sgd_step(p, g, group, optimizer.state.get(p, {}))
        else:
            adam.setdefault(id(group), []).append(i)
    for idx in adam.values():
        group = group_of[params[idx[0]]]
        decoupled = isinstance(optimizer, AdamW) or group.get("decoupled_weight_decay", False)
        states = [optimizer.state.get(params[i], {}) for i in idx]
        done = _adam_steps([params[i] for i in idx], [grads[i] for i in idx], group, states, decoupled=decoupled)
        for i, d in zip(idx, done):
            steps[i] = d
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


def _adam_steps(ps: list[Tensor], gs: list[Tensor], group: dict, states: list[dict], *, decoupled: bool) -> list[Tensor]:
    """Adam's update of every tensor of one parameter group, with ``torch._foreach_*`` kernels
    (a handful of launches for the group, not a dozen per tensor), as ``torch.optim.Adam``
    computes it: ``-lr * m_hat / (sqrt(v_hat) + eps)``."""
    beta1, beta2 = group["betas"]
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    if wd and not decoupled:
        gs = torch._foreach_add(gs, ps, alpha=wd)
    fresh = [i for i, st in enumerate(states) if "exp_avg" not in st]
    if fresh:  # tensors the optimizer has not stepped yet (rare: handled one by one)
        for i in fresh:
            states[i] = {"exp_avg": torch.zeros_like(ps[i]), "exp_avg_sq": torch.zeros_like(ps[i])}
    m = list(torch._foreach_lerp([st["exp_avg"] for st in states], gs, 1 - beta1))
    v = list(torch._foreach_mul([st["exp_avg_sq"] for st in states], beta2))
    torch._foreach_addcmul_(v, gs, gs, value=1 - beta2)
    if group.get("amsgrad", False):
        for i, st in enumerate(states):
            if "max_exp_avg_sq" in st:
                v[i] = torch.maximum(st["max_exp_avg_sq"], v[i])
    corrections = [_bias_corrections(st.get("step"), beta1, beta2, p) for st, p in zip(states, ps)]
    if len({isinstance(c1, Tensor) for c1, _ in corrections}) > 1:  # a fresh tensor beside stepped ones
        corrections = [tuple(torch.as_tensor(c, dtype=p.dtype, device=p.device) for c in cs) for cs, p in zip(corrections, ps)]
    torch._foreach_div_(v, [c2 for _, c2 in corrections])
    torch._foreach_sqrt_(v)
    torch._foreach_add_(v, eps)
    torch._foreach_div_(m, v)
    torch._foreach_mul_(m, [-lr / c1 if isinstance(c1, float) else c1.reciprocal() * -lr for c1, _ in corrections])
    if wd and decoupled:
        torch._foreach_add_(m, ps, alpha=-lr * wd)
    return m


def _bias_corrections(step, beta1: float, beta2: float, p: Tensor) -> tuple:
    """Adam's ``1 - beta ** (step + 1)`` for the step about to be taken. A step kept beside the
    parameter (fused Adam keeps it on the GPU) stays a tensor: reading it on the host would stall
    the device at every step. Computed in float64, as Python floats would be, then rounded once
    to the parameter's dtype."""
    if step is None or (not isinstance(step, Tensor) and not step):
        return 1 - beta1, 1 - beta2
    if not isinstance(step, Tensor) or step.device != p.device:  # on the host already
        step = float(step) + 1
        return 1 - beta1**step, 1 - beta2**step
    step = step.to(device=p.device, dtype=torch.float64) + 1
    ones = torch.ones((), dtype=torch.float64, device=p.device)
    return ((ones - beta1**step).to(p.dtype), (ones - beta2**step).to(p.dtype))
