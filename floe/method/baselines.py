"""The baselines' layer signals from a model (METHOD 12 and docs/method.md, "Policies"):
pretrained weight norms, the warm-up adapter's update norms, LoRA-drop's output norms and
the HT-SR alpha of AlphaLoRA. Rankings from them: floe.method.importance.norm_ranking."""
from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial

import torch

from floe.adapters.hydralora import role_adapter
from floe.method.masks import batch_to, model_device
from floe.models import arch

__all__ = ["adapter_output_norms", "adapter_update_norms", "hill_alpha", "ht_sr_alphas",
           "weight_norms"]


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


# --------------------------------------------------------------------------- LoRA-drop
@contextmanager
def _output_norm_hooks(model, roles, totals: torch.Tensor, mask: dict):
    """Add each adapter's squared output norm over real tokens to totals[layer]."""
    def hook_for(k: int):
        def hook(module, inputs, output):
            delta = (output - module.base(inputs[0])).double()  # the adapter branch alone
            totals[k] += float((delta.square().sum(-1) * mask["tokens"]).sum())
        return hook
    handles, seen = [], set()
    for k in range(arch.shape_of(model.config).n_layers):
        for role in roles:
            module = role_adapter(model, k, role)  # a fused projection's roles: one each
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                handles.append(module.register_forward_hook(hook_for(k)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def adapter_output_norms(model, batches, roles) -> torch.Tensor:
    """LoRA-drop's importance (Zhou et al. 2024) per layer: sum over the real tokens of the
    data and over the layer's adapted projections of ||Delta W x||^2, the squared norm of
    the adapter's output. The model is run in eval mode (no dropout), adapters on."""
    totals = torch.zeros(arch.shape_of(model.config).n_layers, dtype=torch.float64)
    mask: dict = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _output_norm_hooks(model, roles, totals, mask):
            for batch in batches:
                batch = batch_to(batch, model_device(model))
                mask["tokens"] = batch["attention_mask"].double()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False, logits_to_keep=1)
    finally:
        model.train(was_training)
    return totals


# --------------------------------------------------------------------------- HT-SR
def hill_alpha(eigenvalues: torch.Tensor) -> float:
    """Power-law exponent of an eigenvalue spectrum's tail by the Hill estimator, with the
    tail taken as the upper half (AlphaLoRA's and TempBalance's ``xmin_mid``): with the
    positive eigenvalues sorted ascending and i = n // 2,

        alpha = 1 + (n - i) / sum_{j >= i} log(lambda_j / lambda_i) .

    Heavier tails (a better-trained layer, in HT-SR theory) give a smaller alpha."""
    lam = torch.sort(eigenvalues.double()[eigenvalues > 0]).values
    if lam.numel() < 2:
        raise ValueError("the Hill estimator needs at least 2 positive eigenvalues")
    i = lam.numel() // 2
    tail = lam[i:]
    spread = float(torch.log(tail / lam[i]).sum())
    return math.inf if spread == 0 else 1.0 + tail.numel() / spread


def ht_sr_alphas(model, roles=arch.ROLES) -> torch.Tensor:
    """Per layer, the mean Hill alpha over its pretrained projections' eigenspectra (the
    eigenvalues of W^T W, i.e. squared singular values). Data-free. AlphaLoRA gives layers
    of larger alpha (less well trained) more adapter capacity."""
    n = arch.shape_of(model.config).n_layers
    out = []
    with torch.no_grad():
        for k in range(n):
            alphas = []
            for role in roles:
                weight = arch.role_weight(model, k, role)  # a fused projection's own rows
                alphas.append(hill_alpha(torch.linalg.svdvals(weight.float()).double() ** 2))
            out.append(sum(alphas) / len(alphas))
    return torch.tensor(out, dtype=torch.float64)
