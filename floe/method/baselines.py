"""The baselines' layer signals from a model (METHOD 12): pretrained weight norms and the
warm-up adapter's update norms. Rankings from them: floe.method.importance.norm_ranking."""
from __future__ import annotations

from functools import partial

import torch

from floe.adapters.hydralora import role_adapter
from floe.models import arch

__all__ = ["adapter_update_norms", "weight_norms"]


def _layer_norm(model, k: int, roles, weight_of) -> float:
    return float(sum(weight_of(k, r).double().square().sum() for r in roles) ** 0.5)


def weight_norms(model, roles) -> torch.Tensor:
    """Per-layer L2 norm of the pretrained target weights (the paper's weight-norm baseline)."""
    n = arch.shape_of(model.config).n_layers
    return torch.tensor([_layer_norm(model, k, roles, partial(arch.role_weight, model))
                         for k in range(n)])


def adapter_update_norms(model, roles) -> torch.Tensor:
    """Per-layer L2 norm of the warm-up update, sqrt(sum over targets and experts ||dW_i||^2)."""
    n = arch.shape_of(model.config).n_layers

    def update(k, r):
        adapter = role_adapter(model, k, r)
        return adapter.expert_updates() if adapter is not None else torch.zeros(1)
    with torch.no_grad():
        return torch.tensor([_layer_norm(model, k, roles, update) for k in range(n)])
