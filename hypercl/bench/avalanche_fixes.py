"""A fix for Avalanche 0.6 that the baselines need to be fair."""

from __future__ import annotations

import torch
from avalanche.training.plugins import SynapticIntelligencePlugin


@torch.no_grad()
def _extract_weights(model, target, excluded_parameters) -> None:
    for name, param in SynapticIntelligencePlugin.allowed_parameters(model, excluded_parameters):
        target[name].data = param.detach().cpu().flatten().clone()


def fix_synaptic_intelligence_on_cpu() -> None:
    """Make Avalanche's SI snapshot weights by copy, not by alias.

    ``SynapticIntelligencePlugin.extract_weights`` stores ``param.detach().cpu().flatten()``.
    On a GPU ``.cpu()`` copies; on a CPU it returns the parameter itself, so the "old"
    weights, the "new" weights and the anchor of the penalty all alias the live
    parameters: the path integral and the penalty are exactly zero and SI trains like
    Naive whatever its strength. Cloning restores the intended behaviour everywhere.
    """
    SynapticIntelligencePlugin.extract_weights = staticmethod(_extract_weights)
