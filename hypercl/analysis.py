"""Looking inside a trained HyperCL model: its task embeddings and the networks they generate.

What a hypernetwork offers beyond other continual learners is a continuous space of networks:
every point of the task-embedding space is a network. These functions measure that space:
how similar the learned embeddings are, how far apart the generated weights lie, and how a
network behaves on the way from one task's embedding to another's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from hypercl.model import HyperCLModel


def embedding_similarity(model: HyperCLModel, tasks: Sequence[int] | None = None) -> Tensor:
    """Cosine similarity ``(T, T)`` between the embeddings of ``tasks`` (default: all)."""
    e = model.embeddings(model.tasks if tasks is None else list(tasks)).detach()
    e = F.normalize(e, dim=1)
    return e @ e.T


@torch.no_grad()
def weight_distances(model: HyperCLModel, tasks: Sequence[int] | None = None) -> Tensor:
    """Relative distance ``d[i, j] = ||W_i - W_j|| / ||W_j||`` between the flat target weights
    generated for tasks ``i`` and ``j`` (default: all tasks); 0 on the diagonal."""
    flat = model.hnet(model.embeddings(model.tasks if tasks is None else list(tasks)))  # (T, P)
    return torch.cdist(flat[None], flat[None])[0] / flat.norm(dim=1)[None]


def interpolate(model: HyperCLModel, a: int, b: int, alphas: Iterable[float]) -> Tensor:
    """Embeddings ``(1 - α) e_a + α e_b`` for each ``α``: ``(len(alphas), task_emb_dim)``."""
    e = model.embeddings([a, b]).detach()
    alphas = torch.as_tensor(list(alphas), dtype=e.dtype, device=e.device)[:, None]
    return (1 - alphas) * e[0] + alphas * e[1]


@torch.no_grad()
def path_accuracy(
    model: HyperCLModel,
    a: int,
    b: int,
    data: dict[int, tuple[Tensor, Tensor]],
    alphas: Sequence[float] = tuple(i / 10 for i in range(11)),
) -> dict[int, list[float]]:
    """Accuracy on each task of ``data`` (task -> inputs, labels) of the networks generated
    along the straight line from task ``a``'s embedding (α = 0) to task ``b``'s (α = 1).

    Each network runs with the batch-norm statistics and class mask of the nearer end
    (``a`` up to α = 0.5, ``b`` after; see :meth:`HyperCLModel.run_weights`), so compare
    tasks whose labels use the same outputs (e.g. ``class_ids_from_zero_in_each_exp``).
    """
    was_training = model.training
    model.eval()
    out: dict[int, list[float]] = {t: [] for t in data}
    flats = model.hnet(interpolate(model, a, b, alphas))  # (len(alphas), P)
    for alpha, flat in zip(alphas, flats):
        for task, (x, y) in data.items():
            logits = model.run_weights(x, flat, a if alpha <= 0.5 else b)
            out[task].append((logits.argmax(1) == y).float().mean().item())
    model.train(was_training)
    return out


@torch.no_grad()
def cross_task_accuracy(model: HyperCLModel, data: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
    """``m[i, j]``: accuracy on task ``j``'s data (``data``: task -> inputs, labels) of the network
    generated for task ``i``; the diagonal is ordinary task-incremental accuracy."""
    was_training = model.training
    model.eval()
    tasks = list(data)
    flats = model.hnet(model.embeddings(tasks))  # (T, P)
    m = torch.zeros(len(tasks), len(tasks))
    for i, (task, flat) in enumerate(zip(tasks, flats)):
        for j, (x, y) in enumerate(data.values()):
            m[i, j] = (model.run_weights(x, flat, task).argmax(1) == y).float().mean()
    model.train(was_training)
    return m


def experience_tensors(experience, limit: int | None = None, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Inputs and labels of an Avalanche experience as two tensors (the first ``limit``)."""
    xs, ys, n = [], [], 0
    for x, y, *_ in DataLoader(experience.dataset, batch_size=batch_size):
        xs.append(x)
        ys.append(y)
        n += len(y)
        if limit is not None and n >= limit:
            break
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]
