"""Fisher information of the unit masks on the ADAPTED model (METHOD 4, paper Eq. 8-9).

tau_i = sum over samples s of (dL_s / dm_i)^2 at m = 1: the empirical diagonal Fisher,
with L_s the per-sample loss (``masks.per_sample_loss``: mean token CE over the response
tokens of s). One forward and one backward pass per batch: hooks on the pretrained o_proj
and down_proj read each unit's activation a and its gradient, and
dL_s/dm_u = sum_t <a_u[s, t], dL/da_u[s, t]> (see ``masks.MaskGradients``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from floe.method.masks import (
    Progress,
    capture_mask_gradients,
    eval_mode,
    frozen_parameters,
    model_device,
    per_sample_loss,
    report_progress,
    stat_dtype,
    steps_of,
)
from floe.models import arch

__all__ = ["mask_fisher"]


def mask_fisher(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau_heads [L, H], tau_neurons [L, N]) in fp32 (fp64 for fp64 models), on the model's device.

    Runs the model as it is (adapters on, eval mode); parameters are frozen meanwhile so
    that only activation gradients are computed; the model's .grad stay untouched.
    """
    shape = arch.shape_of(model.config)
    device, dtype = model_device(model), stat_dtype(next(model.parameters()).dtype)
    tau_heads = torch.zeros(shape.n_layers, shape.n_heads, device=device, dtype=dtype)
    tau_neurons = torch.zeros(shape.n_layers, shape.intermediate, device=device, dtype=dtype)
    total = steps_of(batches)
    with eval_mode(model), frozen_parameters(model), capture_mask_gradients(model) as grads:
        for step, batch in enumerate(batches, 1):
            per_sample_loss(model, batch).sum().backward()
            heads, neurons = grads.take()  # [B, L, H], [B, L, N]
            tau_heads += heads.square().sum(0)
            tau_neurons += neurons.square().sum(0)
            report_progress(progress, step, total)
    return tau_heads, tau_neurons
