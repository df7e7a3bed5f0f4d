"""Small streams and training loops shared by the tests."""

from __future__ import annotations

import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from hypercl import MLP, HyperNetConfig, HyperCLModel


def conflicting_stream(n_tasks: int = 3, n_classes: int = 4, n: int = 256, dim: int = 16, seed: int = 0):
    """Tasks on the same inputs whose labels contradict each other.

    Inputs are well separated Gaussian blobs with base class ``c``; task ``t``
    labels them ``(c + t) % n_classes``, so no single function fits two tasks.
    """
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(n_classes, dim, generator=g)
    base = torch.arange(n) % n_classes
    x_train = centres[base] + torch.randn(n, dim, generator=g)
    x_test = centres[base] + torch.randn(n, dim, generator=g)
    labels = [(base + t) % n_classes for t in range(n_tasks)]
    return tensors_benchmark(
        train_tensors=[(x_train, y) for y in labels],
        test_tensors=[(x_test, y) for y in labels],
        task_labels=list(range(n_tasks)),
        complete_test_set_only=False,
    )


def small_model(dim: int = 16, n_classes: int = 4, **kwargs) -> HyperCLModel:
    hnet = HyperNetConfig(hidden=(16,), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8)
    return HyperCLModel(MLP(dim, (32,), n_classes), hnet=hnet, **kwargs)


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        loggers=[],
    )


def accuracy_matrix(strategy, benchmark) -> list[list[float]]:
    """acc[i][j]: accuracy on test experience j after training experience i (j <= i)."""
    acc = []
    for i, exp in enumerate(benchmark.train_stream):
        strategy.train(exp)
        res = strategy.eval(benchmark.test_stream[: i + 1])
        acc.append([_exp_acc(res, e) for e in benchmark.test_stream[: i + 1]])
    return acc


def final_and_bwt(acc: list[list[float]]) -> tuple[float, float]:
    """Average accuracy after the last task, and backward transfer (both fractions)."""
    n = len(acc)
    return sum(acc[-1]) / n, sum(acc[-1][j] - acc[j][j] for j in range(n - 1)) / (n - 1)


def _exp_acc(res: dict, exp) -> float:
    key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{exp.task_label:03d}/Exp{exp.current_experience:03d}"
    return res[key]


def set_all_params(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def write_cifar(root, name: str, per_class: int = 4, test_per_class: int = 2, seed: int = 0) -> dict:
    """Small CIFAR files in the original python-pickle layout under ``root``.

    ``per_class`` training and ``test_per_class`` test images of every class, shuffled;
    CIFAR-10's training images are spread over its five batch files. Returns the
    written ``{"train": (data, labels), "test": (data, labels)}`` as numpy arrays.
    """
    import pickle

    import numpy as np

    from hypercl.cifar import CIFAR

    fmt = CIFAR[name]
    rng = np.random.default_rng(seed)
    folder = root / fmt.folder
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, files, n in (("train", fmt.train, per_class), ("test", fmt.test, test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(fmt.n_classes), n))
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        written[split] = (data, labels)
        for file, part in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            batch = {b"batch_label": file.encode(), b"data": data[part], fmt.label_key: labels[part].tolist()}
            if name == "cifar100":
                batch[b"coarse_labels"] = (labels[part] // 5).tolist()
            with open(folder / file, "wb") as f:
                pickle.dump(batch, f)
    with open(folder / fmt.meta, "wb") as f:
        pickle.dump({fmt.names_key: [f"class{i}".encode() for i in range(fmt.n_classes)]}, f)
    return written
