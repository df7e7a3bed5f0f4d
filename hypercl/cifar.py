"""CIFAR-10 and CIFAR-100 from their python-pickle folders, and the Split CIFAR benchmarks.

The loaders read ``cifar-10-batches-py/`` and ``cifar-100-python/`` under a data root
without checking the files' md5 (a folder holding every image in another order is as
good as the original), validate what they read, and download through torchvision only
into the cache folder, never into a root the user named.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hypercl.data.roots import DATA_ROOT_ENV, data_root
from hypercl.data.transforms import Standardize

CACHE_ROOT = Path("~/.cache/hypercl/data")


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR data set's files live and what they hold."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    n_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision: str  # the torchvision class that downloads it

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)


CIFAR: dict[str, CifarFormat] = {
    "cifar10": CifarFormat(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        n_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        torchvision="CIFAR10",
    ),
    "cifar100": CifarFormat(
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        n_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        torchvision="CIFAR100",
    ),
}


def _format(name: str) -> CifarFormat:
    if name not in CIFAR:
        raise ValueError(f"Unknown CIFAR data set {name!r}; choose from {', '.join(CIFAR)}.")
    return CIFAR[name]


def cifar_root(name: str, root: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The data root holding ``name``'s folder with every file it needs.

    ``root``, else ``$HYPERCL_DATA_ROOT``: it must already hold the files. Without
    either, the cache folder ``~/.cache/hypercl/data``, filled through torchvision's
    download when online (``download=True``).

    Raises:
        FileNotFoundError: files missing (named in the message) and not downloadable.
    """
    fmt = _format(name)
    path = data_root(root)
    if path is not None:
        _check_files(fmt, path)
        return path
    cache = CACHE_ROOT.expanduser()
    if not _missing(fmt, cache):
        return cache
    if not download:
        _check_files(fmt, cache)
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, fmt.torchvision)(cache, train=True, download=True)
    except (OSError, RuntimeError) as err:
        raise FileNotFoundError(
            f"{name} is not in {cache / fmt.folder} and could not be downloaded ({err}). "
            f"Pass a data root (--data-root, or set {DATA_ROOT_ENV}) holding "
            f"{fmt.folder}/{{{','.join(fmt.files)}}}."
        ) from err
    _check_files(fmt, cache)
    return cache


def _missing(fmt: CifarFormat, root: Path) -> list[str]:
    return [f for f in fmt.files if not (root / fmt.folder / f).is_file()]


def _check_files(fmt: CifarFormat, root: Path) -> None:
    missing = _missing(fmt, root)
    if missing:
        raise FileNotFoundError(
            f"{fmt.folder} is incomplete under {root}: missing {', '.join(missing)}. Put the "
            f"python-pickle files ({', '.join(fmt.files)}) in {root / fmt.folder}, e.g. by "
            f"extracting the original {fmt.folder.split('-batches')[0]}-python.tar.gz there."
        )


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(
            f"{path} is not a readable CIFAR pickle ({type(err).__name__}: {err}); the file is "
            "truncated or of another kind. Replace it with the original file."
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not the dict a CIFAR pickle holds.")
    return data


def load_cifar(name: str, root: str | os.PathLike | None = None, *, train: bool = True) -> tuple[Tensor, Tensor]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of a CIFAR split, in file order.

    Args:
        name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
        root: the data root (see :func:`cifar_root`).
        train: the training split, else the test split.

    Raises:
        FileNotFoundError: missing files.
        ValueError: a file that is not a CIFAR pickle of this data set (wrong keys, shapes,
            or labels out of range: e.g. a CIFAR-100 file where CIFAR-10 was expected).
    """
    fmt = _format(name)
    folder = cifar_root(name, root) / fmt.folder
    xs, ys = [], []
    for file in fmt.train if train else fmt.test:
        path = folder / file
        data = _unpickle(path)
        if b"data" not in data or fmt.label_key not in data:
            keys = ", ".join(k.decode() if isinstance(k, bytes) else str(k) for k in data)
            raise ValueError(
                f"{path} has keys [{keys}] but a {name} batch has 'data' and "
                f"'{fmt.label_key.decode()}': is the data root pointing at another data set?"
            )
        x = torch.as_tensor(data[b"data"])
        y = torch.as_tensor(list(data[fmt.label_key]), dtype=torch.long)
        if x.dtype != torch.uint8 or x.dim() != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise ValueError(
                f"{path}: expected 'data' uint8 of shape (N, 3072) and N labels, got "
                f"{x.dtype} {tuple(x.shape)} and {len(y)} labels. Replace it with the original file."
            )
        if len(y) and (y.min() < 0 or y.max() >= fmt.n_classes):
            raise ValueError(
                f"{path}: labels span {y.min().item()}..{y.max().item()} but {name} has "
                f"{fmt.n_classes} classes: is the data root pointing at another data set?"
            )
        xs.append(x.view(-1, 3, 32, 32))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def class_names(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """The class names from the data set's ``meta`` file, indexed by label."""
    fmt = _format(name)
    path = cifar_root(name, root) / fmt.folder / fmt.meta
    data = _unpickle(path)
    if fmt.names_key not in data:
        raise ValueError(f"{path} has no '{fmt.names_key.decode()}': is it {name}'s meta file?")
    return [n.decode() if isinstance(n, bytes) else n for n in data[fmt.names_key]]


def normalize(name: str, images: Tensor) -> Tensor:
    """uint8 images ``(N, 3, H, W)`` as float32, scaled to [0, 1] and standardised per channel
    with the data set's training mean and standard deviation."""
    fmt = _format(name)
    return Standardize(fmt.mean, fmt.std)(images)


def split_cifar100(
    root: str | os.PathLike | None = None,
    *,
    n_experiences: int = 10,
    return_task_id: bool = True,
    class_ids_from_zero_in_each_exp: bool = True,
    train_transform=None,
    eval_transform=None,
):
    """Split CIFAR-100: the 100 classes in label order, ``n_experiences`` tasks of equal size.

    An Avalanche ``nc_benchmark`` over normalised float images ``(3, 32, 32)``; with the
    defaults every experience has its task label and class ids from zero (task-incremental,
    the paper's protocol). Augmentation: pass tensor transforms, or train with
    :class:`hypercl.augment.BatchAugment`, which augments whole mini-batches at once.
    """
    if n_experiences < 1 or 100 % n_experiences:
        raise ValueError(f"n_experiences must divide the 100 classes evenly (e.g. 10, 20), got {n_experiences}.")
    parts = [("cifar100", range(100))]
    return _split(parts, root, n_experiences, return_task_id, class_ids_from_zero_in_each_exp, train_transform, eval_transform)


def split_cifar10_100(
    root: str | os.PathLike | None = None,
    *,
    n_cifar100_tasks: int = 5,
    return_task_id: bool = True,
    class_ids_from_zero_in_each_exp: bool = True,
    train_transform=None,
    eval_transform=None,
):
    """The paper's Split CIFAR-10/100: CIFAR-10 as the first task, then the first
    ``10 * n_cifar100_tasks`` CIFAR-100 classes in tasks of 10 (classes 10, 11, ... in the
    global numbering). Each data set is standardised with its own statistics.
    """
    if not 1 <= n_cifar100_tasks <= 10:
        raise ValueError(f"n_cifar100_tasks must be 1..10 (CIFAR-100 has 100 classes), got {n_cifar100_tasks}.")
    parts = [("cifar10", range(10)), ("cifar100", range(10 * n_cifar100_tasks))]
    return _split(parts, root, 1 + n_cifar100_tasks, return_task_id, class_ids_from_zero_in_each_exp, train_transform, eval_transform)


def _split(parts, root, n_experiences, task_labels, from_zero, train_transform, eval_transform):
    """``nc_benchmark`` over the listed classes of each data set, numbered consecutively."""
    from avalanche.benchmarks import nc_benchmark
    from torch.utils.data import TensorDataset

    # One data set: its uint8 pixels, standardised on the fly (by the batch, on the device, with
    # hypercl.data.DeviceData). Two: each standardised with its own statistics up front.
    standardize = Standardize(_format(parts[0][0]).mean, _format(parts[0][0]).std) if len(parts) == 1 else None
    splits = []
    for train in (True, False):
        xs, ys, offset = [], [], 0
        for name, classes in parts:
            x, y = load_cifar(name, root, train=train)
            keep = y < len(classes)  # the first classes, in label order
            xs.append(x[keep] if standardize else normalize(name, x[keep]))
            ys.append(y[keep] + offset)
            offset += len(classes)
        splits.append(TensorDataset(torch.cat(xs), torch.cat(ys)))
    if standardize is not None:
        from torchvision.transforms import Compose

        train_transform = Compose([standardize, train_transform]) if train_transform else standardize
        eval_transform = Compose([standardize, eval_transform]) if eval_transform else standardize
    n_classes = sum(len(c) for _, c in parts)
    return nc_benchmark(
        splits[0],
        splits[1],
        n_experiences,
        task_labels=task_labels,
        fixed_class_order=list(range(n_classes)),
        class_ids_from_zero_in_each_exp=from_zero,
        train_transform=train_transform,
        eval_transform=eval_transform,
    )
