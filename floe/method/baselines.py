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
    """Add each adapter's squared output norm over real tokens to totals[layer].

    A hook reads its adapter's output as output - base(x). On a fused projection the roles'
    adapters are nested (Phi-3's v wraps k wraps q wraps qkv_proj), so that base(x) is a
    forward of the inner adapters: their hooks must ignore it, or an inner role is counted
    once per outer role (q four times, k and gate twice)."""
    recomputing = [False]

    def hook_for(k: int):
        def hook(module, inputs, output):
            if recomputing[0]:  # an outer hook's base(x) below, not the model's forward
                return
            recomputing[0] = True
            try:
                base = module.base(inputs[0])  # the inner adapters' outputs included
            finally:
                recomputing[0] = False
            delta = (output - base).double()  # this adapter's branch alone
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
    """Power-law exponent of an eigenvalue spectrum's tail by the Hill estimator (METHOD 12,
    PL_Alpha_Hill): with the n positive eigenvalues sorted ascending (1-based), the tail the
    largest k = n // 2 (n/2 rounded down for odd n) and the threshold the eigenvalue below
    them, lambda_{n-k},

        alpha = 1 + k / sum_{i=1..k} log(lambda_{n-i+1} / lambda_{n-k}) .

    This is the classical Hill estimator of the tail index a (P(lambda > x) ~ x^-a) plus
    one, i.e. the exponent of the density p(lambda) ~ lambda^-alpha. (Earlier score runs store
    the ``xmin_mid`` reading: threshold at the 0-based index n // 2, itself counted in the
    tail.) Heavier tails (a better-trained layer, in HT-SR theory) give a
    smaller alpha; a flat tail (all equal to the threshold) gives inf."""
    lam = torch.sort(eigenvalues.double()[eigenvalues > 0]).values
    n = lam.numel()
    if n < 2:
        raise ValueError("the Hill estimator needs at least 2 positive eigenvalues")
    k = n // 2
    threshold = lam[n - k - 1]  # lambda_{n-k}, 1-based
    spread = float(torch.log(lam[n - k:] / threshold).sum())
    return math.inf if spread == 0 else 1.0 + k / spread


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
