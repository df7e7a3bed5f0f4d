"""The output regulariser and the lookahead step, checked against plain reference code."""

import pytest
import torch
from helpers import conflicting_stream, small_model

from hypercl import MLP, HyperCL, HyperCLModel, HyperCLPlugin, HyperNetConfig
from hypercl.regularizer import FactoredTargets, StoredTargets
from hypercl.lookahead import candidate_step


def reference_regularizer(model, targets, tasks, theta=None):
    """The paper's regulariser written plainly: a loop over tasks, dicts of tensors."""
    total = 0.0
    for t in tasks:
        emb = model.task_embs[str(t)].detach()
        if theta is None:
            weights = model.hnet.generate(emb)
        else:
            weights = model.hnet.layout.unflatten(torch.func.functional_call(model.hnet, theta, (emb[None],))[0])
        total = total + sum(((weights[n] - targets[t][n]) ** 2).sum() for n in weights)
    return total / len(tasks)


def trained_a_little(model, steps=3):
    opt = torch.optim.Adam(model.hnet.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(8, 16)
        model(x, 0).logsumexp(1).mean().backward()
        opt.step()
    return opt


def snapshotted(n_tasks, **plugin_kwargs):
    """A model with ``n_tasks`` embeddings, a plugin that snapshotted them, and the snapshot as dicts."""
    return snapshotted_model(small_model(), n_tasks, **plugin_kwargs)


def snapshotted_model(model, n_tasks, **plugin_kwargs):
    for t in range(n_tasks):
        model.add_task(t)
    plugin = HyperCLPlugin(**plugin_kwargs)
    plugin.targets.snapshot(model)
    with torch.no_grad():
        snapshot = {t: {n: w.clone() for n, w in model.generate(t).items()} for t in range(n_tasks)}
    return model, plugin, snapshot


@pytest.mark.parametrize("init", ["variance", "xavier"])
@pytest.mark.parametrize("mode", ["stored", "frozen", "factored"])
def test_regulariser_is_zero_at_the_snapshot_and_matches_the_reference_after(mode, init):
    hnet = HyperNetConfig(hidden=(16, 12), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8, init=init)
    model, plugin, snapshot = snapshotted_model(HyperCLModel(MLP(16, (32,), 4), hnet=hnet), 4, targets=mode)
    assert plugin.regularizer(model, [1, 2, 3]).abs().item() < 1e-9

    trained_a_little(model)
    for tasks in ([1, 2, 3], [3, 1]):
        fast = plugin.regularizer(model, tasks)
        slow = reference_regularizer(model, snapshot, tasks)
        assert fast.item() > 0
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=0)
        theta = list(model.hnet.parameters())
        g_fast = torch.autograd.grad(fast, theta)
        g_slow = torch.autograd.grad(slow, theta)
        for a, b in zip(g_fast, g_slow):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # float32 sums in another order


@pytest.mark.parametrize("init", ["variance", "xavier"])
def test_factored_targets_direct_and_gram_forms_agree_with_the_reference(init):
    hnet = HyperNetConfig(hidden=(16, 12), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8, init=init)
    model, plugin, snapshot = snapshotted_model(HyperCLModel(MLP(16, (32,), 4), hnet=hnet), 5, targets="factored")
    trained_a_little(model)
    targets, theta = plugin.targets, list(model.hnet.parameters())
    tasks = [4, 0, 2]
    embs = model.embeddings(tasks).detach()
    slow = reference_regularizer(model, snapshot, tasks)
    g_slow = torch.autograd.grad(slow, theta)
    for form in ("direct", "factored"):
        fast = targets.regularizer(model.hnet, embs, targets.rows(tasks), form=form)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=0)
        for a, b in zip(torch.autograd.grad(fast, theta), g_slow):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The cost model: the direct form for few tasks, the Gram form from
    # k K C >= GRAM_COST (C (H+1) + K (H+1)^2) on.
    n_chunks, h1, c = model.hnet.n_chunks, 12 + 1, 100
    border = FactoredTargets.GRAM_COST * (c * h1 + n_chunks * h1 * h1) / (n_chunks * c)
    assert targets.uses_direct(1) and not targets.uses_direct(int(border) + 1)
    assert all(targets.uses_direct(k) == (k < border) for k in range(1, 40))
    with pytest.raises(ValueError, match="form must be 'direct', 'factored' or None"):
        targets.regularizer(model.hnet, embs, None, form="gram")


def test_regulariser_sends_no_gradient_to_task_embeddings():
    model, plugin, _ = snapshotted(3)
    trained_a_little(model)
    model.zero_grad(set_to_none=True)
    plugin.regularizer(model, [0, 1, 2]).backward()
    assert all(p.grad is None for p in model.task_embs.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.hnet.parameters())


def test_frozen_copy_memory_is_flat_in_tasks_while_stored_targets_grow():
    sizes = {}
    for mode in ("stored", "frozen", "factored"):
        model = small_model()
        plugin = HyperCLPlugin(targets=mode)
        for n_tasks in (2, 10):
            while len(model.tasks) < n_tasks:
                model.add_task(len(model.tasks))
            plugin.targets.snapshot(model)
            sizes[mode, n_tasks] = plugin.targets.nbytes()
    assert sizes["stored", 10] == 5 * sizes["stored", 2]
    emb_bytes = 8 * 4  # one float32 task embedding of size 8
    assert sizes["frozen", 10] - sizes["frozen", 2] == 8 * emb_bytes
    # factored: per task one (chunks, hidden + 1) float32 feature block
    model = small_model()
    k, h = model.hnet.n_chunks, model.hnet.layers[-1].in_features
    assert sizes["factored", 10] - sizes["factored", 2] == 8 * k * (h + 1) * 4


def test_factored_targets_are_the_stored_weights_and_need_a_hidden_layer():
    model, factored, _ = snapshotted(3, targets="factored")
    stored = HyperCLPlugin(targets="stored").targets
    stored.snapshot(model)
    torch.testing.assert_close(factored.targets([2, 0]), stored([2, 0]), rtol=0, atol=1e-6)
    linear = HyperCLModel(MLP(16, (32,), 4), hnet=HyperNetConfig(hidden=(), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8))
    linear.add_task(0)
    with pytest.raises(ValueError, match='needs a hypernetwork with a hidden layer.*Use "stored" or "frozen"'):
        HyperCLPlugin(targets="factored").targets.snapshot(linear)
    assert isinstance(HyperCL(target=MLP(16, (8,), 4), hnet=HyperNetConfig(hidden=(), chunk_size=100)).hypercl.targets,
                      StoredTargets)  # fmt: skip
    assert isinstance(HyperCL(target=MLP(16, (8,), 4)).hypercl.targets, FactoredTargets)  # "auto"
    explicit = HyperCL(target=MLP(16, (32,), 4), hnet=HyperNetConfig(hidden=(), chunk_size=100), reg_targets="factored")
    with pytest.raises(ValueError, match="needs a hypernetwork with a hidden layer"):
        explicit.train(conflicting_stream(n_tasks=1).train_stream[0])  # before the first step
    assert explicit.clock.train_iterations == 0


def test_random_subset_draws_k_distinct_earlier_tasks():
    plugin = HyperCLPlugin(reg_tasks=3)
    plugin.earlier_tasks = list(range(10))
    draws = [tuple(plugin.sample_tasks()) for _ in range(50)]
    assert all(len(set(d)) == 3 and set(d) <= set(range(10)) for d in draws)
    assert len(set(draws)) > 10  # really random, not a fixed subset
    plugin.earlier_tasks = [4, 7]
    assert plugin.sample_tasks() == [4, 7]


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-l2-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd-dampened": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("warm_steps", [0, 3])
def test_candidate_step_is_the_step_the_optimizer_takes(name, warm_steps):
    w = torch.nn.Parameter(torch.randn(5, 4))
    b = torch.nn.Parameter(torch.randn(4))
    opt = OPTIMIZERS[name]([w, b])

    def loss():
        return ((torch.randn(3, 5) @ w + b) ** 2).sum()

    for _ in range(warm_steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    opt.zero_grad()
    loss().backward()
    predicted = candidate_step(opt, [w, b], [w.grad, b.grad])
    before = [w.detach().clone(), b.detach().clone()]
    opt.step()
    for p, old, step in zip([w, b], before, predicted):
        torch.testing.assert_close(p.detach() - old, step, rtol=1e-5, atol=1e-7)


def test_candidate_step_refuses_optimizers_it_cannot_predict():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="SGD, Adam and AdamW; got RMSprop"):
        candidate_step(torch.optim.RMSprop([p]), [p], [torch.ones(3)])


@pytest.mark.parametrize("mode", ["stored", "factored"])
def test_lookahead_regulariser_is_evaluated_at_theta_plus_the_candidate_step(mode):
    model, plugin, snapshot = snapshotted(3, lookahead=True, targets=mode)
    opt = trained_a_little(model)
    opt.zero_grad()
    model(torch.randn(8, 16), 2).logsumexp(1).mean().backward()
    names, theta = zip(*model.hnet.named_parameters())
    delta = dict(zip(names, candidate_step(opt, theta, [p.grad for p in theta])))
    looked = plugin.regularizer(model, [0, 1], delta)
    moved = {n: p + delta[n] for n, p in zip(names, theta)}
    torch.testing.assert_close(looked, reference_regularizer(model, snapshot, [0, 1], moved), rtol=1e-5, atol=0)
    assert looked.item() != pytest.approx(plugin.regularizer(model, [0, 1]).item(), rel=1e-3)
