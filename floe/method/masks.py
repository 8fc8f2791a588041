"""Unit masks (METHOD 2), the per-sample loss, and the hooks the scoring passes share.

A *unit* is a query head or an FFN neuron. Its mask scales what the unit feeds into the
pretrained output projection:

- head h of layer k: the slice [h*d:(h+1)*d] of the input of o_proj;
- neuron j of layer k: element j of the input of down_proj.

Masks act on the *pretrained* linear only (paper Eq. 2: theta~ = m * theta + phi). Where
HydraLoRA wraps o_proj or down_proj, the hook sits on the wrapped base layer, so the adapter
still sees the unmasked activations and its router stays independent of m; this keeps the
layer output affine in m, which the least-squares tuning (floe/tune.py) relies on.

Every hook lives in a context manager and is removed on exit, exceptions included.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from floe.adapters.hydralora import base_layer
from floe.models import arch
from floe.models.head import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "MaskGradients", "batch_to", "capture_mask_gradients", "eval_mode",
           "frozen_parameters", "mask_hooks", "model_device", "per_sample_loss",
           "pretrained_linear", "report_progress", "scale_units", "stat_dtype", "steps_of"]


# progress(done, total): called after each step (a batch, or a layer in tune_masks); total
# is None when the number of steps is unknown. A tqdm-like object (with .update) works too.
Progress = Callable[[int, "int | None"], Any]


def report_progress(progress: Progress | None, done: int, total: int | None) -> None:
    if progress is None:
        return
    if hasattr(progress, "update"):  # tqdm and friends count steps themselves
        progress.update(1)
    else:
        progress(done, total)


def steps_of(batches) -> int | None:
    return len(batches) if hasattr(batches, "__len__") else None


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics accumulate in fp32 (fp64 for an fp64 model, as the exactness tests use)."""
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------------------- the loss


def batch_to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "labels")}


def per_sample_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """L_s for each sample s of the batch, shape [B], in fp32 (fp64 for an fp64 model).

    L_s = mean over the label positions t of sample s of CE(logits[s, t-1], labels[s, t])
    (causal shift; labels of -100, i.e. prompt and padding, are ignored). A sample without
    label tokens gets L_s = 0. Only the positions from the batch's first label onwards go
    through the LM head (``logits_to_keep``), which matters for large vocabularies.
    """
    batch = batch_to(batch, model_device(model))
    labels = batch["labels"]
    T = labels.shape[1]
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    # One host sync per batch: the earliest predicting position any sample needs.
    starts = valid.any(0).nonzero()
    first = int(starts[0]) if len(starts) else T - 2
    keep = T - first  # logits of positions first .. T-1; the last one predicts nothing
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False, logits_to_keep=keep).logits[:, :-1]
    targets, valid = targets[:, first:], valid[:, first:]
    ce = F.cross_entropy(logits.to(stat_dtype(logits.dtype)).flatten(0, 1), targets.flatten(),
                         ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)
    return ce.sum(1) / valid.sum(1).clamp(min=1)


# ----------------------------------------------------------------- where masks attach


def pretrained_linear(model: nn.Module, layer: int, role: str) -> nn.Module:
    """The pretrained linear of ``role`` in ``layer``: the base of its HydraLoRA wrappers
    (for a fused role, the whole fused linear: ``arch.role_rows`` says which rows)."""
    return base_layer(arch.projection(model, layer, role))


def scale_units(x: torch.Tensor, values: torch.Tensor, unit_size: int) -> torch.Tensor:
    """x[..., i*unit_size:(i+1)*unit_size] * values[i] for every unit i (keeps autograd)."""
    values = values.to(device=x.device, dtype=x.dtype)
    if unit_size == 1:
        return x * values
    return (x.unflatten(-1, (values.shape[0], unit_size)) * values[:, None]).flatten(-2)


def _input_scaler(values: torch.Tensor, unit_size: int):
    def hook(module, args):
        return (scale_units(args[0], values, unit_size),) + tuple(args[1:])
    return hook


def _check_masks(name: str, masks: torch.Tensor | None, rows: int, cols: int) -> None:
    if masks is not None and tuple(masks.shape) != (rows, cols):
        raise ValueError(f"{name} must have shape ({rows}, {cols}), got {tuple(masks.shape)}")


@contextlib.contextmanager
def mask_hooks(model: nn.Module, head_masks: torch.Tensor | None = None,
               neuron_masks: torch.Tensor | None = None) -> Iterator[nn.Module]:
    """Run ``model`` with head masks [L, H] and neuron masks [L, N] applied (METHOD 2).

    Forward pre-hooks on the pretrained o_proj / down_proj scale their inputs by the mask
    values; masks may require grad (they enter the graph), and may hold any real values
    (the tuned masks are continuous). ``None`` leaves that component unmasked.
    """
    shape = arch.shape_of(model.config)
    _check_masks("head_masks", head_masks, shape.n_layers, shape.n_heads)
    _check_masks("neuron_masks", neuron_masks, shape.n_layers, shape.intermediate)
    handles = []
    try:
        for k in range(shape.n_layers):
            if head_masks is not None:
                handles.append(pretrained_linear(model, k, "o").register_forward_pre_hook(
                    _input_scaler(head_masks[k], shape.head_dim)))
            if neuron_masks is not None:
                handles.append(pretrained_linear(model, k, "down").register_forward_pre_hook(
                    _input_scaler(neuron_masks[k], 1)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


# -------------------------------------------------------- shared state for scoring passes


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """requires_grad=False on every parameter (restored on exit).

    The scoring passes need activation gradients only; frozen weights make autograd skip
    every weight-gradient matmul and keep .grad of the model untouched.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Deterministic forward passes (adapter dropout off); the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ------------------------------------------------------- per-sample mask gradients (Fisher)


class MaskGradients:
    """Per-sample gradients of the losses w.r.t. every head and neuron mask at m = 1.

    For a scalar mask m on an activation slice a_u (the unit's input to the pretrained
    projection), dL_s/dm_u = sum over the tokens t of sample s of <a_u[s, t], dL/da_u[s, t]>.
    With one backward pass of sum_s L_s, the gradient at sample s's activations depends on
    L_s alone (samples do not interact in a causal LM under its attention mask), so the
    values are exact per-sample gradients, from a single batched backward pass.
    """

    def __init__(self, shape: arch.Shape):
        self.shape = shape
        self.heads: list[torch.Tensor | None] = [None] * shape.n_layers    # [B, H] each
        self.neurons: list[torch.Tensor | None] = [None] * shape.n_layers  # [B, N] each

    def _store(self, store: list, layer: int, unit_size: int):
        def on_grad(a: torch.Tensor, grad: torch.Tensor) -> None:
            dtype = stat_dtype(a.dtype)
            per_token = (a.to(dtype) * grad.to(dtype)).sum(1)          # [B, units * unit_size]
            if unit_size > 1:
                per_token = per_token.unflatten(-1, (-1, unit_size)).sum(-1)
            store[layer] = per_token
        return on_grad

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads [B, L, H], neurons [B, L, N]) of the last backward pass, then reset."""
        missing = [k for k in range(self.shape.n_layers)
                   if self.heads[k] is None or self.neurons[k] is None]
        if missing:
            raise RuntimeError(f"no mask gradients for layers {missing}: run a backward pass "
                               "of the loss inside capture_mask_gradients first")
        heads = torch.stack([h for h in self.heads if h is not None], 1)  # none is, by the check above
        neurons = torch.stack([n for n in self.neurons if n is not None], 1)
        for k in range(self.shape.n_layers):  # in place: the hooks hold these lists
            self.heads[k] = self.neurons[k] = None
        return heads, neurons


def _gradient_tap(on_grad, root: bool):
    """Pre-hook handing (activation, its gradient) to ``on_grad`` during backward.

    ``x.view_as(x)`` gives the pretrained linear its own graph node, so the gradient seen
    is the one through the pretrained weight only (not the adapter's branch of a wrapper).
    The ``root`` tap (first o_proj) starts the graph: its input becomes a leaf, so the
    backward pass stops there and nothing above it is differentiated.
    """
    def hook(module, args):
        x = args[0]
        if root:
            a = x.detach().requires_grad_(True)
        elif x.requires_grad:
            a = x.view_as(x)
        else:  # no graph (e.g. under torch.no_grad): nothing to capture
            return None
        held = [a]  # emptied by the hook: no a -> hook -> a cycle outlives the backward
        a.register_hook(lambda grad: on_grad(held.pop(), grad))
        return (a,) + tuple(args[1:])
    return hook


@contextlib.contextmanager
def capture_mask_gradients(model: nn.Module) -> Iterator[MaskGradients]:
    """Record per-sample head and neuron mask gradients during backward passes.

    Use with frozen parameters: ``loss = per_sample_loss(model, batch).sum();
    loss.backward(); heads, neurons = grads.take()``. Gradients are not propagated above
    layer 0's o_proj input, so this context is for mask gradients only.
    """
    shape = arch.shape_of(model.config)
    grads = MaskGradients(shape)
    handles = []
    try:
        for k in range(shape.n_layers):
            handles.append(pretrained_linear(model, k, "o").register_forward_pre_hook(
                _gradient_tap(grads._store(grads.heads, k, shape.head_dim), root=k == 0)))
            handles.append(pretrained_linear(model, k, "down").register_forward_pre_hook(
                _gradient_tap(grads._store(grads.neurons, k, 1), root=False)))
        yield grads
    finally:
        for handle in handles:
            handle.remove()
