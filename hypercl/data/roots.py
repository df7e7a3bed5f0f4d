"""Where the data sets live, checked before anything is trained."""

from __future__ import annotations

import math
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
            f"MNIST(root='{path}', download=True) once while online.{_misplaced(path)}"
        )
    for name in MNIST_FILES:
        check_idx(raw / name, MNIST_SHAPES[name])
    return path


#: What each MNIST file holds: (IDX type code, shape).
MNIST_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}


def check_idx(path: Path, shape: tuple[int, ...]) -> None:
    """Check that ``path`` is an uncompressed IDX file of unsigned bytes with ``shape``, from its
    header and its size (without reading the data).

    Raises:
        ValueError: the file is empty, compressed, truncated or of another shape; the message
            says which and how to get the right file.
    """
    size = path.stat().st_size
    fix = "Replace it with the original (gunzipped) MNIST file."
    head = path.read_bytes()[: 4 + 4 * len(shape)] if size else b""
    if size == 0:
        raise ValueError(f"{path} is empty. {fix}")
    if head[:2] == b"\x1f\x8b":
        raise ValueError(f"{path} is gzip-compressed: gunzip it in place (keeping the name without .gz).")
    if len(head) < 4 + 4 * len(shape) or head[:3] != b"\x00\x00\x08" or head[3] != len(shape):
        raise ValueError(
            f"{path} is not an IDX file of {len(shape)}-d unsigned bytes (its header starts "
            f"{head[:4].hex()}, expected 0000080{len(shape)}). {fix}"
        )
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(shape)))
    if dims != shape:
        raise ValueError(
            f"{path} holds data of shape {dims}; MNIST's {path.name} is {shape}. The data root "
            f"points at another data set: point it at MNIST's. {fix}"
        )
    expected = len(head) + math.prod(shape)
    if size != expected:
        raise ValueError(f"{path} is truncated or padded: {size} bytes, expected {expected}. {fix}")


def _misplaced(path: Path) -> str:
    """A hint when the root is a level off or holds other data sets."""
    if all((path / f).is_file() for f in MNIST_FILES):
        return f" ({path} itself holds the IDX files: the root is the folder two levels up, holding MNIST/raw/.)"
    if (path / "raw").is_dir():
        return f" ({path} looks like the MNIST folder: the root is its parent.)"
    others = [d for d in ("cifar-100-python", "cifar-10-batches-py", "FashionMNIST", "KMNIST") if (path / d).is_dir()]
    if others:
        return f" ({path} holds {', '.join(others)} but no MNIST: is it the right root?)"
    return ""
