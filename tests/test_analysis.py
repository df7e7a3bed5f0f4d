"""The embedding-space probes: exact at the learned embeddings, task-specific in between."""

import pytest
import torch
from helpers import conflicting_stream, evaluator

from hypercl import MLP, HyperCL, HyperNetConfig
from hypercl.analysis import (
    cross_task_accuracy,
    embedding_similarity,
    experience_tensors,
    interpolate,
    path_accuracy,
    weight_distances,
)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    bm = conflicting_stream(n_tasks=3)
    # beta 0.1 over 30 epochs keeps all three conflicting tasks on each of seeds 0-7 (beta 0.05
    # over 15 epochs lost one task to the next on 3 of 8 seeds: the tiny hypernetwork is tight)
    strategy = HyperCL(target=MLP(16, (32,), 4), hnet=HyperNetConfig(hidden=(16,), chunk_size=100, task_emb_dim=8,
                       chunk_emb_dim=8), lr=5e-3, beta=0.1, train_mb_size=32, train_epochs=30, evaluator=evaluator())  # fmt: skip
    strategy.train(bm.train_stream)
    data = {t: experience_tensors(bm.test_stream[t]) for t in range(3)}
    return strategy.model.eval(), data


def test_experience_tensors_hold_the_whole_experience_in_order():
    bm = conflicting_stream(n_tasks=2, n=70)
    x, y = experience_tensors(bm.test_stream[1], batch_size=32)
    assert x.shape == (70, 16) and torch.equal(y, (torch.arange(70) % 4 + 1) % 4)
    x5, y5 = experience_tensors(bm.test_stream[1], limit=5, batch_size=2)
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])


def test_cross_task_accuracy_diagonal_is_each_tasks_own_accuracy(trained):
    model, data = trained
    m = cross_task_accuracy(model, data)
    own = [(model(x, t).argmax(1) == y).float().mean() for t, (x, y) in data.items()]
    assert torch.allclose(m.diag(), torch.stack(own))
    assert m.diag().min() > 0.97
    # the tasks relabel the same inputs, so a task's network is wrong on the others' labels
    off = ~torch.eye(3, dtype=torch.bool)
    assert m[off].max() < 0.1


def test_embedding_path_runs_from_one_tasks_network_to_the_others(trained):
    model, data = trained
    e = model.embeddings([0, 1])
    ends = interpolate(model, 0, 1, [0.0, 1.0])
    assert torch.equal(ends, e.detach())
    acc = path_accuracy(model, 0, 1, {0: data[0], 1: data[1]}, alphas=[0.0, 0.25, 0.5, 0.75, 1.0])
    own = cross_task_accuracy(model, data)
    assert acc[0][0] == pytest.approx(own[0, 0].item()) and acc[1][-1] == pytest.approx(own[1, 1].item())
    assert acc[0][-1] == pytest.approx(own[1, 0].item()) and acc[1][0] == pytest.approx(own[0, 1].item())
    assert acc[0][0] > acc[0][-1] and acc[1][-1] > acc[1][0]  # each task is best at its own end
    assert model.training is False


def test_similarity_and_distance_matrices(trained):
    model, _ = trained
    sim = embedding_similarity(model)
    e = model.embeddings(model.tasks)
    assert torch.allclose(sim[0, 1], torch.cosine_similarity(e[0], e[1], dim=0), atol=1e-6)
    assert torch.allclose(sim.diag(), torch.ones(3), atol=1e-6)
    d = weight_distances(model)
    w = model.hnet(e).detach()
    assert torch.allclose(d[2, 0], (w[2] - w[0]).norm() / w[0].norm(), atol=1e-6)
    assert torch.allclose(d.diag(), torch.zeros(3), atol=1e-3) and d[0, 1] > 0.05
