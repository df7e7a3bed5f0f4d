"""hypercl: continual learning with task-conditioned hypernetworks, as an Avalanche strategy."""

from hypercl.hypernet import ChunkedHyperNetwork, HyperNetConfig
from hypercl.inference import EntropyInference, MahalanobisInference, OneShotInference, TaskInference
from hypercl.layout import WeightLayout
from hypercl.metrics import TaskInferenceAccuracy, task_inference_metrics
from hypercl.model import HyperCLModel
from hypercl.plugin import HyperCLPlugin
from hypercl.regularizer import FrozenCopyTargets, StoredTargets, output_regularizer
from hypercl.strategy import HyperCL
from hypercl.budget import StepBudget
from hypercl.targets import MLP

__version__ = "0.1.0"

__all__ = [
    "ChunkedHyperNetwork",
    "EntropyInference",
    "FrozenCopyTargets",
    "HyperCL",
    "HyperCLModel",
    "HyperCLPlugin",
    "HyperNetConfig",
    "MLP",
    "MahalanobisInference",
    "OneShotInference",
    "StepBudget",
    "StoredTargets",
    "TaskInference",
    "TaskInferenceAccuracy",
    "WeightLayout",
    "output_regularizer",
    "task_inference_metrics",
]
