"""The benchmarks, built with Avalanche's classic builders, then held as tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from avalanche.benchmarks import tensors_benchmark

from hypercl.cifar import CIFAR, cifar_root
from hypercl.data.tensors import DataCache
from hypercl.data.transforms import Standardize
from hypercl.data.roots import DATA_ROOT_ENV, MNIST_FILES, data_root, mnist_root

CACHE_ROOT = Path("~/.cache/hypercl/data")
MAX_TENSOR_BYTES = 4 * 2**30


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a runner needs to know about a benchmark beyond its streams."""

    name: str
    scenario: str  # "task", "domain" or "class"
    n_tasks: int
    in_features: int
    classes_per_task: int
    image: bool = False  # inputs are (3, 32, 32) images, not flat vectors

    @property
    def n_outputs(self) -> int:
        """Outputs of a single-head classifier: all classes in the class scenario."""
        return self.classes_per_task * (self.n_tasks if self.scenario == "class" else 1)


SCENARIOS = {
    "task": "task-incremental (CL1): the task label is given",
    "domain": "domain-incremental (CL2): no task label, one label space shared by all tasks",
    "class": "class-incremental (CL3): no task label, each task brings new classes",
}


BENCHMARKS = {
    "split-mnist": BenchmarkInfo("split-mnist", "task", 5, 784, 2),
    "pmnist-10": BenchmarkInfo("pmnist-10", "task", 10, 1024, 10),
    "pmnist-100": BenchmarkInfo("pmnist-100", "task", 100, 1024, 10),
    "split-cifar100": BenchmarkInfo("split-cifar100", "task", 10, 3072, 10, image=True),
    "split-cifar10-100": BenchmarkInfo("split-cifar10-100", "task", 6, 3072, 10, image=True),
}

#: The CIFAR data sets each CIFAR benchmark reads.
CIFAR_SETS = {"split-cifar100": ("cifar100",), "split-cifar10-100": ("cifar10", "cifar100")}


def resolve_data_root(root: str | os.PathLike | None, benchmark: str = "split-mnist") -> Path:
    """The data root of ``benchmark``: ``root``, else ``$HYPERCL_DATA_ROOT``, else a cache folder.

    An explicit root (argument or environment) must already hold the files; the cache
    folder is filled by a download when online.

    Raises:
        FileNotFoundError: the files are missing and cannot be downloaded.
    """
    if benchmark in CIFAR_SETS:
        roots = {cifar_root(name, root) for name in CIFAR_SETS[benchmark]}
        if len(roots) > 1:
            raise FileNotFoundError(f"{benchmark} needs {' and '.join(CIFAR_SETS[benchmark])} under one data root.")
        return roots.pop()
    if data_root(root) is not None:
        return mnist_root(root)
    cache = CACHE_ROOT.expanduser()
    try:
        return mnist_root(cache)
    except FileNotFoundError:
        pass
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(cache, train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise FileNotFoundError(
            f"MNIST is not in {cache / 'MNIST' / 'raw'} and could not be downloaded ({err}). "
            f"Pass --data-root (or set {DATA_ROOT_ENV}) to a folder holding "
            f"MNIST/raw/{{{','.join(MNIST_FILES)}}}."
        ) from err
    return mnist_root(cache)


def info_of(name: str, scenario: str = "task") -> BenchmarkInfo:
    """The benchmark ``name`` in ``scenario``.

    Raises:
        ValueError: unknown benchmark or scenario, or a pair that is not built.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}.")
    if scenario not in SCENARIOS:
        raise ValueError(f"Unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}.")
    if scenario != "task" and name == "pmnist-100":
        raise ValueError(
            "pmnist-100 is built task-incremental only (it is too large to hold in memory and "
            "relabel); use pmnist-10 for the domain and class scenarios."
        )
    return replace(BENCHMARKS[name], scenario=scenario)


def build(
    name: str,
    root: Path,
    seed: int,
    *,
    scenario: str = "task",
    validation: float = 0.0,
    n_tasks: int | None = None,
):
    """The benchmark ``name`` with fixed class order and seeded permutations, as tensors.

    ``scenario`` sets the labels: ``"task"`` gives every sample its task label and class
    ids from zero in each task; ``"domain"`` keeps those class ids and sets every task
    label to 0; ``"class"`` sets every task label to 0 and gives task ``t``'s ``k``-th
    class the id ``t * classes_per_task + k`` (Split MNIST: the digit itself).

    ``n_tasks`` builds only the first tasks of a permuted or CIFAR benchmark (the same
    permutations and classes as in the full stream); Split MNIST always has its five.

    With ``validation`` > 0, that fraction of each task's training set (a seeded random
    draw) becomes the test stream and the rest the training stream: tuning never sees
    the test set.

    Avalanche's ``SplitMNIST`` and ``PermutedMNIST`` (and :mod:`hypercl.cifar`'s
    ``nc_benchmark`` builders) build the streams (task labels, class ids from zero in each
    task); their transformed samples are then gathered once into tensors (where they fit
    in 4 GiB), so training does not pay for per-sample transforms at every step.
    """
    from avalanche.benchmarks.classic import PermutedMNIST, SplitMNIST
    from torchvision import transforms

    from hypercl.cifar import split_cifar10_100, split_cifar100

    info = info_of(name, scenario)
    if name == "split-cifar100":
        bm = split_cifar100(root)
    elif name == "split-cifar10-100":
        bm = split_cifar10_100(root)
    elif name == "split-mnist":
        bm = SplitMNIST(
            n_experiences=info.n_tasks,
            return_task_id=True,
            class_ids_from_zero_in_each_exp=True,
            fixed_class_order=list(range(10)),
            seed=seed,
            dataset_root=root,
        )
    else:
        # The paper pads 28x28 to 32x32. Avalanche permutes the 784 pixels before this
        # transform, so the border stays in place: for an MLP that is the same problem.
        pad = transforms.Compose([transforms.Pad(2), transforms.Normalize((0.1307,), (0.3081,))])
        bm = PermutedMNIST(
            n_experiences=min(n_tasks or info.n_tasks, info.n_tasks),
            return_task_id=True,
            seed=seed,
            train_transform=pad,
            eval_transform=pad,
            dataset_root=root,
        )
    n_samples = sum(len(e.dataset) for e in (*bm.train_stream, *bm.test_stream))
    if n_samples * info.in_features * 4 > MAX_TENSOR_BYTES:
        if validation:
            raise ValueError(f"{name} is too large to hold in memory, so it has no validation split.")
        return bm  # too large to hold (PMNIST-100): keep Avalanche's lazy datasets
    keep = n_tasks if info.image and n_tasks else None  # CIFAR: gather only the tasks to run
    cache, stats = DataCache("cpu"), _STATS[name]
    train = [_tensors(cache, e.dataset.train(), stats, info.image) for e in bm.train_stream[:keep]]
    test = [_tensors(cache, e.dataset.eval(), stats, info.image) for e in bm.test_stream[:keep]]
    transform = train[0][2]
    if any(t != transform for *_, t in (*train, *test)):
        raise ValueError(f"{name}: the experiences' data came out in different formats; report this as a bug.")
    train, test = [(x, y) for x, y, _ in train], [(x, y) for x, y, _ in test]
    if validation:
        g = torch.Generator().manual_seed(seed)
        splits = [torch.randperm(len(y), generator=g) for _, y in train]
        cut = [int(round(validation * len(i))) for i in splits]
        test = [(x[i[:c]], y[i[:c]]) for (x, y), i, c in zip(train, splits, cut)]
        train = [(x[i[c:]], y[i[c:]]) for (x, y), i, c in zip(train, splits, cut)]
    task_labels = [e.task_label for e in bm.train_stream[: len(train)]]
    if scenario != "task":
        task_labels = [0] * len(task_labels)
    if scenario == "class":
        k = info.classes_per_task
        train = [(x, y + t * k) for t, (x, y) in enumerate(train)]
        test = [(x, y + t * k) for t, (x, y) in enumerate(test)]
    return tensors_benchmark(
        train_tensors=train,
        test_tensors=test,
        task_labels=task_labels,
        complete_test_set_only=False,
        train_transform=transform,
        eval_transform=transform,
    )


#: Mean and std of the pixels scaled to [0, 1], as the benchmarks standardise them.
_STATS = {
    "split-mnist": ((0.1307,), (0.3081,)),
    "pmnist-10": ((0.1307,), (0.3081,)),
    "pmnist-100": ((0.1307,), (0.3081,)),
    "split-cifar100": (CIFAR["cifar100"].mean, CIFAR["cifar100"].std),
    "split-cifar10-100": (None, None),  # two data sets, each with its own statistics
}


def _compose(transforms):
    from torchvision.transforms import Compose

    return Compose(list(transforms))


def _tensors(cache: DataCache, dataset, stats: tuple, image: bool):
    """An experience's inputs, targets and the transform they need: uint8 pixels and their
    :class:`~hypercl.data.Standardize` where that gives exactly the values Avalanche's own
    transforms give (4 times less memory, on the device too), else the transformed floats."""
    got = cache.tensors(dataset)
    if isinstance(got, str):
        raise ValueError(f"The benchmark's data cannot be held as tensors: {got}.")
    x = got.x if image else got.x.flatten(1)
    if got.transform:
        return x, got.y, got.transform[0] if len(got.transform) == 1 else _compose(got.transform)
    mean, std = stats
    if mean is not None:
        standardize = Standardize(mean, std, channel_dim=-3 if image else -1)
        pixels = (x * torch.tensor(std).view(-1, *[1] * (x.dim() - 2)) + torch.tensor(mean).view(-1, *[1] * (x.dim() - 2)))
        pixels = (pixels * 255).round().clamp(0, 255).to(torch.uint8)
        if torch.equal(standardize(pixels), x):
            return pixels, got.y, standardize
    return x, got.y, None
