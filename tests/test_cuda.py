"""CPU and GPU agree: generated weights, regulariser and training steps to float tolerance, and a
training run under ``torch.use_deterministic_algorithms`` is the same run twice.

Marked ``cuda``: ``make gpu-check`` runs them (``pytest -m cuda tests/test_cuda.py``). The device
is ``$HYPERCL_TEST_DEVICE`` (default ``cuda``); they skip where it is not available. With
``HYPERCL_TEST_DEVICE=cpu`` they compare the CPU with itself, which is how the test suite keeps
the GPU check's toy run from rotting on machines without a GPU.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin
from helpers import conflicting_stream

from hypercl import MLP, HyperCL, HyperCLModel, HyperCLPlugin, HyperNetConfig, StepBudget
from hypercl.data import DeviceData

# cuBLAS reads its workspace setting when its first handle is made, so it must be set before any
# CUDA work in this process, not in the test that needs it; deterministic cuBLAS needs it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

DEVICE = torch.device(os.environ.get("HYPERCL_TEST_DEVICE", "cuda"))


def _available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu"


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.filterwarnings("ignore:No loggers specified"),
    pytest.mark.skipif(
        not _available(DEVICE),
        reason=f"needs a CUDA GPU (HYPERCL_TEST_DEVICE={DEVICE}; torch {torch.__version__} sees none); "
        "run by make gpu-check",
    ),
]

SMALL_HNET = HyperNetConfig(hidden=(16,), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8)


def mnist_sized_model() -> HyperCLModel:
    """A Split-MNIST-shaped target (784-100-2, 78,702 weights in 20 chunks) with tasks 0 and 1."""
    torch.manual_seed(0)
    hnet = HyperNetConfig(hidden=(10, 10), chunk_size=4000, task_emb_dim=8, chunk_emb_dim=8)
    model = HyperCLModel(MLP(784, (100,), 2), hnet=hnet)
    model.add_task(0)
    model.add_task(1)
    return model


def test_generated_weights_and_outputs_are_the_cpus():
    cpu = mnist_sized_model()
    dev = copy.deepcopy(cpu).to(DEVICE)
    w_cpu, w_dev = cpu.hnet(cpu.embeddings([0, 1])), dev.hnet(dev.embeddings([0, 1]))  # (2, P)
    assert w_dev.device.type == DEVICE.type
    assert w_cpu.shape == (2, 78_702) and w_cpu.abs().max() > 0.01
    torch.testing.assert_close(w_dev.cpu(), w_cpu, rtol=1e-5, atol=1e-6)
    x = torch.randn(64, 784)
    torch.testing.assert_close(dev(x.to(DEVICE), 1).cpu(), cpu(x, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets", ["stored", "frozen", "factored"])
def test_regulariser_and_its_gradients_are_the_cpus(targets):
    base = mnist_sized_model()
    g = torch.Generator().manual_seed(1)
    noise = [0.05 * torch.randn(p.shape, generator=g) for p in base.hnet.parameters()]
    values, grads = {}, {}
    for device in ("cpu", DEVICE):
        model = copy.deepcopy(base).to(device)
        plugin = HyperCLPlugin(targets=targets)
        plugin.targets.snapshot(model)
        assert plugin.regularizer(model, [0, 1]).abs().item() < 1e-9  # zero right after the snapshot
        with torch.no_grad():
            for p, d in zip(model.hnet.parameters(), noise):
                p.add_(d.to(device))
        reg = plugin.regularizer(model, [0, 1])
        values[device] = reg.detach().cpu()
        grads[device] = [gr.cpu() for gr in torch.autograd.grad(reg, list(model.hnet.parameters()))]
    assert values["cpu"] > 1e-3
    # A sum over 157,404 squared differences (factored: float64 Gram matrices whose terms nearly
    # cancel): CPU and GPU add in other orders, so allow 1e-4 relative, not one float's rounding.
    torch.testing.assert_close(values[DEVICE], values["cpu"], rtol=1e-4, atol=0)
    for a, b in zip(grads[DEVICE], grads["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def trained(device: torch.device | str, steps: int, plugins=()) -> tuple[dict, dict]:
    """HyperCL trained for ``steps`` steps on each of two conflicting tasks, on ``device``: the
    initial and final state dicts (on the CPU). Both tasks' embeddings are made on the CPU before
    training, so every device starts from the same numbers (one made in ``adaptation`` on a GPU
    would come from the GPU's random generator); the second task is regularised towards the first."""
    torch.manual_seed(0)
    stream = conflicting_stream(n_tasks=2, n=128)
    strategy = HyperCL(
        target=MLP(16, (32,), 4), hnet=SMALL_HNET, beta=0.05, train_mb_size=32, device=device,
        plugins=[*plugins, StepBudget(steps)], evaluator=EvaluationPlugin(loggers=[]),
    )  # fmt: skip
    for task in (0, 1):
        strategy.model.add_task(task)
    start = {k: v.detach().clone() for k, v in strategy.model.state_dict().items()}
    for exp in stream.train_stream:
        strategy.train(exp)
    assert strategy.clock.train_iterations == 2 * steps
    assert next(strategy.model.parameters()).device.type == torch.device(device).type
    return start, {k: v.detach().cpu() for k, v in strategy.model.state_dict().items()}


def _max_change(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_training_steps_are_the_cpus():
    start, on_cpu = trained("cpu", 3)
    _, on_dev = trained(DEVICE, 3)
    assert _max_change(start, on_cpu) > 1e-3  # Adam's steps moved the weights well past the tolerance
    assert on_cpu.keys() == on_dev.keys()
    for k in on_cpu:
        torch.testing.assert_close(on_dev[k], on_cpu[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_a_deterministic_training_run_is_the_same_run_twice():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        start, first = trained(DEVICE, 10, plugins=[DeviceData()])
        _, second = trained(DEVICE, 10, plugins=[DeviceData()])
    finally:
        torch.use_deterministic_algorithms(was)
    assert _max_change(start, first) > 1e-3
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"not bit-identical: {different}"
