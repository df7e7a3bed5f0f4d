"""Where the data sets live, checked before anything is trained."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the folder that holds ``MNIST/raw/...``.
DATA_ROOT_ENV = "HYPERCL_DATA_ROOT"

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def data_root(root: str | os.PathLike | None = None) -> Path | None:
    """``root`` if given, else ``$HYPERCL_DATA_ROOT``, else ``None``."""
    root = root if root is not None else os.environ.get(DATA_ROOT_ENV) or None
    return None if root is None else Path(root).expanduser()


def mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The data root, checked to hold MNIST's four IDX files under ``MNIST/raw``.

    This is the layout torchvision's ``MNIST`` and Avalanche's ``SplitMNIST`` /
    ``PermutedMNIST`` read offline (``dataset_root=...``).

    Raises:
        FileNotFoundError: no root given, or files missing; the message names them.
    """
    path = data_root(root)
    if path is None:
        raise FileNotFoundError(
            f"No data root: pass one or set {DATA_ROOT_ENV} to a folder holding "
            f"MNIST/raw/{{{','.join(MNIST_FILES)}}}."
        )
    raw = path / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST is incomplete under {raw}: missing {', '.join(missing)}. Put the four "
            "uncompressed IDX files there (e.g. gunzip the originals from "
            "https://ossci-datasets.s3.amazonaws.com/mnist/), or run torchvision's "
            f"MNIST(root='{path}', download=True) once while online."
        )
    return path
