"""hypercl: continual learning with task-conditioned hypernetworks, as an Avalanche strategy."""

from hypercl.augment import BatchAugment, random_crop_flip
from hypercl.checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore
from hypercl.cifar import load_cifar, split_cifar10_100, split_cifar100
from hypercl.hypernet import ChunkedHyperNetwork, HyperNetConfig
from hypercl.inference import EntropyInference, MahalanobisInference, OneShotInference, TaskInference
from hypercl.layout import WeightLayout
from hypercl.metrics import TaskInferenceAccuracy, task_inference_metrics
from hypercl.model import HyperCLModel
from hypercl.plugin import HyperCLPlugin
from hypercl.rng import EvalKeepsRandomState
from hypercl.regularizer import FrozenCopyTargets, StoredTargets, output_regularizer
from hypercl.strategy import HyperCL
from hypercl.budget import StepBudget
from hypercl.schedule import EpochSchedule
from hypercl.targets import MLP, ResNet, ZenkeNet, resnet32

__version__ = "0.2.0"

__all__ = [
    "BatchAugment",
    "Checkpoint",
    "CheckpointError",
    "ChunkedHyperNetwork",
    "EntropyInference",
    "EvalKeepsRandomState",
    "EpochSchedule",
    "FrozenCopyTargets",
    "HyperCL",
    "HyperCLModel",
    "HyperCLPlugin",
    "HyperNetConfig",
    "MLP",
    "MahalanobisInference",
    "OneShotInference",
    "ResNet",
    "StepBudget",
    "StoredTargets",
    "TaskInference",
    "TaskInferenceAccuracy",
    "WeightLayout",
    "ZenkeNet",
    "load_checkpoint",
    "load_cifar",
    "output_regularizer",
    "random_crop_flip",
    "resnet32",
    "restore",
    "split_cifar10_100",
    "split_cifar100",
    "task_inference_metrics",
]
