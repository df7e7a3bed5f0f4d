"""Data: where the data sets live (:mod:`~hypercl.data.roots`) and the device-resident data
path for any Avalanche strategy (:class:`DeviceData`)."""

from hypercl.data.loaders import DeviceLoader, TaskGroups, task_groups
from hypercl.data.plugin import DeviceData
from hypercl.data.roots import DATA_ROOT_ENV, MNIST_FILES, MNIST_SHAPES, check_idx, data_root, mnist_root
from hypercl.data.tensors import DataCache, Tensors
from hypercl.data.transforms import Standardize

__all__ = [
    "DATA_ROOT_ENV",
    "DataCache",
    "DeviceData",
    "DeviceLoader",
    "MNIST_FILES",
    "MNIST_SHAPES",
    "Standardize",
    "TaskGroups",
    "Tensors",
    "check_idx",
    "data_root",
    "mnist_root",
    "task_groups",
]
