"""Taylor importance of every unit on the BASE model (METHOD 3, paper Eq. 4).

Per weight: |g * theta| with g = dL/dtheta, L = (1/S) sum_s L_s the mean per-sample loss
(``masks.per_sample_loss``) over all S samples, and the gradient summed over the data
*before* the product (LLM-Pruner's ``param_first``). Per unit, the sum over the weights it
owns:

    head h:    rows h*d:(h+1)*d of q_proj, columns h*d:(h+1)*d of o_proj, and 1/group
               of the rows of k_proj and v_proj of its K/V head (group = H / H_kv);
    neuron j:  row j of gate_proj and up_proj, column j of down_proj.

Biases (Qwen2's q/k/v) are not counted: a unit owns its weights. In a fused projection
(Phi-3's qkv_proj, gate_up_proj) each role is its block of rows (``arch.role_rows``): the
gradient is gathered once per module and each role reduces its own rows.

How the gradient is gathered. The product needs the data-summed gradient G of each
projection, so G must be kept until the last batch (|.| is not linear; per-layer passes
would cost L backward passes per batch, and keeping the per-token factors X, dY instead
only pays below ~in*out/(in+out) tokens, about 2k for a 7B model). Rather than autograd's
.grad (in the parameter dtype, so bf16 accumulation on GPU), hooks on the 7 projections
compute each batch's dW = dY^T X (the same matmul autograd would do) and add it into an
fp32 buffer; all parameters stay frozen, so embeddings, norms and the LM head get no
gradient at all. Memory: one fp32 copy of the projection weights (26 GB for a 7B model),
plus the activations of one batch; each layer's buffers are reduced to per-unit sums and
freed one layer at a time at the end.

Bounded memory (``chunks`` > 1): the layers are split into N consecutive groups and the
data is run once per group, each pass gathering only its group's gradients (about 1/N of
the buffers). The graph of a pass starts at its group's lowest layer, so layers below it
run without autograd. Each layer's G is the same sum as in one pass: the costs are too.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from floe.adapters.hydralora import adapters_disabled
from floe.method.masks import (
    Progress,
    eval_mode,
    frozen_parameters,
    model_device,
    per_sample_loss,
    pretrained_linear,
    report_progress,
    stat_dtype,
    steps_of,
)
from floe.models import arch

__all__ = ["ROW_OWNED", "GradientSums", "average_costs", "capture_weight_gradients", "layer_chunks",
           "taylor_costs"]

ROW_OWNED = ("q", "k", "v", "gate", "up")  # a unit owns rows of these, columns of o, down


class GradientSums:
    """Data-summed weight gradients of the projections of every layer, in fp32 buffers,
    keyed by (layer, module path): one buffer per fused module."""

    def __init__(self):
        self.sums: dict[tuple[int, str], torch.Tensor] = {}

    def of_role(self, model: nn.Module, layer: int, role: str) -> torch.Tensor:
        """The role's rows of its module's buffer (a view)."""
        grad = self.sums[(layer, arch.role_suffix(model.config, role))]
        rows = arch.role_rows(model.config, role)
        return grad if rows is None else grad[rows]

    def _accumulate(self, key: tuple[int, str], x: torch.Tensor, grad_out: torch.Tensor):
        x2, g2 = x.flatten(0, -2).to(grad_out.device), grad_out.flatten(0, -2)
        buf = self.sums.get(key)
        if buf is None:
            buf = self.sums[key] = torch.zeros(g2.shape[1], x2.shape[1], device=x.device,
                                               dtype=stat_dtype(x.dtype))
        if buf.dtype == x2.dtype:
            buf.addmm_(g2.T, x2)
        else:  # bf16 matmul (fp32 accumulation inside), rounded once per batch
            buf += g2.T @ x2

    def hook(self, key: tuple[int, str]):
        def on_forward(module, args, output):
            if output.requires_grad:
                x = args[0]
                output.register_hook(lambda grad: self._accumulate(key, x, grad))
        return on_forward


def _make_leaf(module, args, kwargs):
    """Pre-hook of the lowest captured layer: its input becomes the root of the graph."""
    if args:
        return (args[0].detach().requires_grad_(True),) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs, hidden_states=kwargs["hidden_states"].detach().requires_grad_(True))
    return args, kwargs


@contextlib.contextmanager
def capture_weight_gradients(model: nn.Module, layers: range | None = None) -> Iterator[GradientSums]:
    """Sum dL/dW of every q, k, v, o, gate, up, down weight of ``layers`` (default: all)
    over the backward passes run inside (frozen parameters: only these gradients are formed)."""
    shape = arch.shape_of(model.config)
    layers = range(shape.n_layers) if layers is None else layers
    sums = GradientSums()
    handles = [arch.decoder_layers(model)[layers[0]].register_forward_pre_hook(_make_leaf,
                                                                                with_kwargs=True)]
    try:
        paths = {arch.role_suffix(model.config, role): role for role in arch.ROLES}
        for k in layers:
            for path, role in paths.items():  # a fused module once
                handles.append(pretrained_linear(model, k, role).register_forward_hook(
                    sums.hook((k, path))))
        yield sums
    finally:
        for handle in handles:
            handle.remove()


def _owned_sums(saliency: torch.Tensor, role: str, unit_size: int) -> torch.Tensor:
    """Per-unit sums of |G * W| over the rows (or columns) each unit owns."""
    per_index = saliency.sum(1) if role in ROW_OWNED else saliency.sum(0)
    return per_index.view(-1, unit_size).sum(1)


def _reduce_layer(model: nn.Module, sums: GradientSums, layer: int,
                  shape: arch.Shape) -> tuple[torch.Tensor, torch.Tensor]:
    unit = {}
    for role in arch.ROLES:
        grad = sums.of_role(model, layer, role)  # in place: roles own disjoint rows
        saliency = grad.mul_(arch.role_weight(model, layer, role).to(grad.device)).abs_()
        unit_size = 1 if role in ("gate", "up", "down") else shape.head_dim
        unit[role] = _owned_sums(saliency, role, unit_size)
        del grad, saliency
    for path in {arch.role_suffix(model.config, role) for role in arch.ROLES}:
        del sums.sums[(layer, path)]  # freed once reduced
    # Each K/V head is shared by `group` query heads: each gets 1/group of it.
    kv_share = (unit["k"] + unit["v"]).repeat_interleave(shape.group) / shape.group
    heads = unit["q"] + unit["o"] + kv_share
    neurons = unit["gate"] + unit["up"] + unit["down"]
    return heads, neurons


def layer_chunks(n_layers: int, chunks: int) -> list[range]:
    """``chunks`` consecutive layer groups of near-equal size (fewer if n_layers is smaller)."""
    size = math.ceil(n_layers / max(1, min(chunks, n_layers)))
    return [range(a, min(a + size, n_layers)) for a in range(0, n_layers, size)]


def taylor_costs(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                 progress: Progress | None = None, chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost_heads [L, H], cost_neurons [L, N]): t_i = sum over the weights unit i owns of
    |dL/dtheta * theta|, on the base model (adapters off), L the mean per-sample loss.
    ``chunks`` > 1: that many passes over ``batches`` (a re-iterable), each gathering the
    gradients of one group of layers."""
    shape = arch.shape_of(model.config)
    groups = layer_chunks(shape.n_layers, chunks)
    steps = steps_of(batches)
    total = steps * len(groups) if steps is not None else None
    dtype = stat_dtype(next(model.parameters()).dtype)
    cost_heads = torch.zeros(shape.n_layers, shape.n_heads, device=model_device(model), dtype=dtype)
    cost_neurons = torch.zeros(shape.n_layers, shape.intermediate, device=cost_heads.device,
                               dtype=dtype)
    done = 0
    with eval_mode(model), adapters_disabled(model), frozen_parameters(model):
        for group in groups:
            n_samples = 0
            with capture_weight_gradients(model, group) as sums:
                for batch in batches:
                    per_sample_loss(model, batch).sum().backward()
                    n_samples += batch["input_ids"].shape[0]
                    done += 1
                    report_progress(progress, done, total)
            if n_samples == 0:
                raise ValueError("taylor_costs needs at least one batch")
            for k in group:
                cost_heads[k], cost_neurons[k] = _reduce_layer(model, sums, k, shape)
    # G was summed over samples; L is their mean, and |G/S * W| = |G * W| / S.
    return cost_heads / n_samples, cost_neurons / n_samples


def average_costs(cost_heads: torch.Tensor, cost_neurons: torch.Tensor) -> tuple[float, float]:
    """(t_h, t_f): the mean cost of a head and of a neuron over the whole model (paper 3.3)."""
    return float(cost_heads.double().mean()), float(cost_neurons.double().mean())
