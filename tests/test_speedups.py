"""The speed-ups change no result: fused Adam steps like Adam; denormals are flushed only while training."""

import pytest
import torch
from avalanche.core import SupervisedPlugin
from helpers import conflicting_stream, evaluator

from hypercl import MLP, HyperCL, HyperNetConfig, StepBudget
from hypercl.speedups import adam, denormals_flushed


def test_fused_adam_takes_the_same_steps_as_adam():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(300, 7)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fast, plain = adam(a, lr=1e-2, betas=(0.5, 0.99)), torch.optim.Adam(b, lr=1e-2, betas=(0.5, 0.99))
    assert fast.defaults.get("fused") in (True, None)  # fused wherever this PyTorch has it
    for _ in range(5):
        g = [torch.randn_like(p) for p in a]
        for ps, opt in ((a, fast), (b, plain)):
            for p, gi in zip(ps, g):
                p.grad = gi.clone()
            opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("before", [False, True])
def test_denormals_are_flushed_while_training_and_restored_after(before):
    seen = []

    class Probe(SupervisedPlugin):
        def before_training_iteration(self, strategy, **kw):
            seen.append(denormals_flushed())

    torch.set_flush_denormal(before)
    try:
        if not torch.set_flush_denormal(before) and before:
            pytest.skip("this CPU cannot flush denormals")
        strategy = HyperCL(target=MLP(16, (8,), 4), hnet=HyperNetConfig(hidden=(8,), chunk_size=50, task_emb_dim=4,
                           chunk_emb_dim=4), train_mb_size=32, plugins=[Probe(), StepBudget(3)], evaluator=evaluator())  # fmt: skip
        strategy.train(conflicting_stream(n_tasks=1).train_stream[0])
        flushed_in_training = torch.set_flush_denormal(True)  # whether the CPU supports it at all
        torch.set_flush_denormal(before)
        assert seen == [flushed_in_training] * 3
        strategy.train(conflicting_stream(n_tasks=1).train_stream[0])
        assert denormals_flushed() is before
        off = HyperCL(target=MLP(16, (8,), 4), flush_denormal=False, plugins=[Probe(), StepBudget(1)], evaluator=evaluator())
        seen.clear()
        off.train(conflicting_stream(n_tasks=1).train_stream[0])
        assert seen == [before]
    finally:
        torch.set_flush_denormal(False)
