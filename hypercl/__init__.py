"""hypercl: continual learning with task-conditioned hypernetworks, as an Avalanche strategy."""

from hypercl.hypernet import ChunkedHyperNetwork, HyperNetConfig
from hypercl.layout import WeightLayout
from hypercl.model import HyperCLModel
from hypercl.plugin import HyperCLPlugin
from hypercl.regularizer import FrozenCopyTargets, StoredTargets, output_regularizer
from hypercl.strategy import HyperCL
from hypercl.budget import StepBudget
from hypercl.targets import MLP

__version__ = "0.1.0"

__all__ = [
    "ChunkedHyperNetwork",
    "FrozenCopyTargets",
    "HyperCL",
    "HyperCLModel",
    "HyperCLPlugin",
    "HyperNetConfig",
    "MLP",
    "StepBudget",
    "StoredTargets",
    "WeightLayout",
    "output_regularizer",
]
