"""Least-squares tuning of the mask values (METHOD 7, paper Eq. 16-22, Appendix E).

Layer by layer, in order, attention then FFN, the retained units' values m of one
component are fitted so that the masked model's residual stream reproduces the unmasked
adapted model's:

    min_m || x' + l(x'; m) - (x + l(x; 1)) ||^2   over the real (non-padding) tokens,

with x the component's input under the unmasked adapted model, x' under the masked model
(earlier components at their tuned values), and l(x; m) = c(x) + sum_u m_u W_u a_u(x), where
a_u is unit u's slice of the input of the pretrained o_proj / down_proj, W_u the matching
columns of its weight, and c(x) what is not masked (adapter branch, biases). Masks act on
the pretrained projection only (``masks.mask_hooks``), so l is affine in m and the problem is
exactly linear. Masked units stay at 0; with u = m - 1 on the retained set R,

    A u ~ b,   A = [W_u a_u(x')]_{u in R} (one row per token and output feature),
               b = (x + l(x; 1)) - (x' + l(x'; binary m)),

so u = 0 is the binary mask and ||b||^2 its error. Normal equations, accumulated batch by
batch without materialising A:

    A^T A = blocksum_{d x d}((W_R^T W_R) * C),  C = sum_t a_R(t) a_R(t)^T,
    A^T b = blocksum_d(sum_t a_R(t) * (W_R^T b(t))),

(d = head_dim for heads, 1 for neurons, where A^T A = (W2^T W2) * (H H^T) as in the paper),
solved with ridge damping toward m = 1: (A^T A + lambda I) u = A^T b,
lambda = damping * mean(diag(A^T A)). A solution with any m outside [-bound, bound], or
(numerically) no better than the binary mask, is rejected: the component keeps its binary
mask, so per layer error_tuned <= error_binary always.

Post-norm architectures (Gemma 3: RMSNorm on each sub-layer output before the residual
add) make l non-linear in m; there the fit is done on the pre-norm sub-layer output,
min ||o(x'; m) - o(x; 1)||^2 with o the o_proj / down_proj output, without the residual
term (``arch.has_post_norms``). Granite scales each sub-layer's output by s before the
residual add (x + s l(x; m)); there A's columns are s W_u a_u (``arch.residual_scale``).

Data flow and memory. One forward pass per batch records every decoder layer's call
arguments (rotary embeddings, attention masks: shared tensors, so cheap) and the layer-0
input. Two residual streams are then kept for all calibration batches, clean (x) and
masked (x'), in the model dtype, and each decoder layer is run on its own: per layer and
batch, one clean run (targets, and x for the next layer), one masked run cut after o_proj
(attention statistics) and one masked run with the tuned heads (FFN statistics). x' for
the next layer follows from that run without another: the output is affine in the neuron
values (post-norm architectures run the layer once more). About 3.3 forward passes in all
with the recording one, no backward; each further mask set (``tune_mask_sets``: the
scoring tunes the refined and the greedy masks) adds about 1.3, sharing the clean runs.
Re-running forward passes from the embeddings instead would cost O(L) passes per layer;
caching every layer's inputs would cost L streams of memory.
Besides the model: 2 streams of tokens x hidden (model dtype; one more per extra mask
set), 2 targets of real tokens x hidden (fp32), the FFN inputs of one layer (tokens x N,
model dtype) and per component C (fp32, (R*d)^2: 485 MB for 11008 neurons) plus fp64
transients of that size while forming A^T A for the solve.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from floe.method.masks import (
    Progress,
    batch_to,
    eval_mode,
    model_device,
    pretrained_linear,
    report_progress,
    scale_units,
    stat_dtype,
)
from floe.method.normal_equations import ComponentFit, NormalEquations
from floe.models import arch
from floe.models.dispatch import weight_of

__all__ = ["TuneResult", "tune_mask_sets", "tune_masks"]


@dataclass
class TuneResult:
    """Tuned mask values and the per-layer reconstruction errors (column 0: attention,
    column 1: FFN; sums of squares over the calibration tokens and hidden features)."""

    head_values: torch.Tensor    # [L, H] float32; 0 on masked heads
    neuron_values: torch.Tensor  # [L, N] float32; 0 on masked neurons
    error_binary: torch.Tensor   # [L, 2] float64, with the binary masks (u = 0)
    error_tuned: torch.Tensor    # [L, 2] float64, with the values returned (<= binary)
    fallback: torch.Tensor       # [L, 2] bool: the solution was rejected, binary kept


# --------------------------------------------------------------- running single layers


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@dataclass
class _Calibration:
    """One batch's recorded decoder-layer calls."""

    x0: torch.Tensor | None          # input of layer 0 [B, T, hidden]
    calls: list[tuple[tuple, dict]]  # per layer: (positional args after x, keyword args)
    tokens: torch.Tensor             # [B, T] bool: real tokens


def _record_layer_calls(model: nn.Module, batches: list[Mapping[str, torch.Tensor]]
                        ) -> list[_Calibration]:
    """Run the model once per batch, keeping what each decoder layer is called with."""
    layers = arch.decoder_layers(model)
    device = model_device(model)
    recorded = []
    for batch in batches:
        batch = batch_to(batch, device)
        r = _Calibration(None, [], batch["attention_mask"].bool())

        def recorder(k: int, r: _Calibration = r):  # this batch's record, bound now
            def hook(module, args, kwargs):
                if k == 0:
                    r.x0 = args[0] if args else kwargs["hidden_states"]
                r.calls.append((tuple(args[1:]),
                                {n: v for n, v in kwargs.items() if n != "hidden_states"}))
                if k == len(layers) - 1:
                    raise _Stop  # all calls known: skip the last layer and the LM head
            return hook

        handles = [layer.register_forward_pre_hook(recorder(k), with_kwargs=True)
                   for k, layer in enumerate(layers)]
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  use_cache=False, logits_to_keep=1)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        recorded.append(r)
    return recorded


@contextlib.contextmanager
def _layer_hooks(model: nn.Module, layer: int, head_values: torch.Tensor | None = None,
                 neuron_values: torch.Tensor | None = None, stop_after_attention: bool = False
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """While running decoder layer ``layer``: apply its mask values, and record the inputs
    of the pretrained o_proj / down_proj (before masking) and the outputs of o_proj /
    down_proj (adapter included) into the yielded dict."""
    shape = arch.shape_of(model.config)
    seen: dict[str, torch.Tensor] = {}

    def tap(name: str, values: torch.Tensor | None, unit_size: int):
        def hook(module, args):
            seen[name] = args[0]
            if values is not None:
                return (scale_units(args[0], values, unit_size),) + tuple(args[1:])
        return hook

    def keep_output(name: str, stop: bool):
        def hook(module, args, output):
            seen[name] = output
            if stop:
                raise _Stop
        return hook

    handles = [
        pretrained_linear(model, layer, "o").register_forward_pre_hook(
            tap("o_in", head_values, shape.head_dim)),
        pretrained_linear(model, layer, "down").register_forward_pre_hook(
            tap("down_in", neuron_values, 1)),
        arch.projection(model, layer, "o").register_forward_hook(
            keep_output("o_out", stop_after_attention)),
        arch.projection(model, layer, "down").register_forward_hook(
            keep_output("down_out", False)),
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _run_layer(model: nn.Module, layer: int, x: torch.Tensor,
               call: tuple[tuple, dict]) -> torch.Tensor | None:
    """Decoder layer ``layer`` on x with its recorded arguments (None if cut short)."""
    args, kwargs = call
    try:
        out = arch.decoder_layers(model)[layer](x, *args, **kwargs)
    except _Stop:
        return None
    return out[0] if isinstance(out, tuple) else out


def _stat(x: torch.Tensor) -> torch.Tensor:
    return x.to(stat_dtype(x.dtype))


def _real(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The real-token rows of x [B, T, F] as [n, F], in the statistics dtype."""
    return _stat(x[tokens])


# ------------------------------------------------------------------ one layer's steps


def _residual_weight(model, k: int, role: str, additive: bool) -> torch.Tensor:
    """The pretrained o_proj / down_proj weight as it enters the residual stream (times
    the residual scale s where the fit is on the residual stream)."""
    weight = weight_of(pretrained_linear(model, k, role))  # offloaded ones too
    scale = arch.residual_scale(model.config)
    return weight * scale if additive and scale != 1.0 else weight


def _clean_targets(model, k, recorded, clean, additive):
    """Run layer k of the unmasked model: the attention and FFN targets (real tokens), and
    ``clean`` advanced to the next layer's input."""
    attn_targets, ffn_targets = [], []
    scale = arch.residual_scale(model.config)
    with _layer_hooks(model, k) as seen:
        for b, r in enumerate(recorded):
            out = _run_layer(model, k, clean[b], r.calls[k])
            assert out is not None, "no hook stops this run"
            if additive:  # x + s l_attn(x; 1) and h + s l_ffn(h; 1)
                attn, ffn = _stat(clean[b]) + scale * seen["o_out"], out
            else:         # the pre-norm sub-layer outputs
                attn, ffn = seen["o_out"], seen["down_out"]
            attn_targets.append(_real(attn, r.tokens))
            ffn_targets.append(_real(ffn, r.tokens))
            clean[b] = out
    return attn_targets, ffn_targets


def _fit_heads(model, k, recorded, masked, targets, keep, additive, damping, bound):
    """Layer k's head values. a(x') does not depend on this layer's head masks, so the
    masked runs stop at o_proj."""
    shape = arch.shape_of(model.config)
    equations = NormalEquations(_residual_weight(model, k, "o", additive), keep, shape.head_dim)
    scale = arch.residual_scale(model.config)
    with _layer_hooks(model, k, head_values=keep.float(), stop_after_attention=True) as seen:
        for b, r in enumerate(recorded):
            _run_layer(model, k, masked[b], r.calls[k])
            binary = _stat(masked[b]) + scale * seen["o_out"] if additive else seen["o_out"]
            equations.add(_real(seen["o_in"], r.tokens), targets[b] - _real(binary, r.tokens))
    return equations.solve(damping, bound)


def _fit_neurons(model, k, recorded, masked, targets, heads, keep, additive, damping, bound):
    """Layer k's neuron values, the FFN input h' coming from the tuned heads; ``masked``
    is advanced in place to the next layer's input x' (both components tuned).

    Additive architectures: the layer output is affine in the neuron values, so the tuned
    output is the binary run's plus (a * (m - binary)) @ (s W2)^T; no second run of the layer.
    """
    down = _residual_weight(model, k, "down", additive)
    equations = NormalEquations(down, keep, 1)
    outputs, inputs = [], []
    with _layer_hooks(model, k, head_values=heads, neuron_values=keep.float()) as seen:
        for b, r in enumerate(recorded):
            out = _run_layer(model, k, masked[b], r.calls[k])
            assert out is not None, "no hook stops this run"
            binary = out if additive else seen["down_out"]
            equations.add(_real(seen["down_in"], r.tokens), targets[b] - _real(binary, r.tokens))
            outputs.append(out)
            inputs.append(seen["down_in"])
    fit = equations.solve(damping, bound)
    if additive:
        shift = (fit.values - equations.keep.double()).to(_stat(down).dtype)
        for b, (out, a) in enumerate(zip(outputs, inputs)):
            masked[b] = out if fit.fallback else (
                _stat(out) + (_stat(a) * shift) @ _stat(down).T).to(out.dtype)
    else:
        del outputs, inputs
        with _layer_hooks(model, k, heads, fit.values):
            for b, r in enumerate(recorded):
                masked[b] = _run_layer(model, k, masked[b], r.calls[k])
    return fit


# ------------------------------------------------------------------------ the driver


def _check_keep(name: str, keep: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if tuple(keep.shape) != (rows, cols):
        raise ValueError(f"{name} must have shape ({rows}, {cols}), got {tuple(keep.shape)}")
    return keep.bool()


def tune_masks(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
               keep_heads: torch.Tensor, keep_neurons: torch.Tensor, damping: float = 1e-2,
               bound: float = 10.0, progress: Progress | None = None) -> TuneResult:
    """Tune the retained units' mask values of every layer (see the module docstring).

    keep_heads [L, H] / keep_neurons [L, N]: True for retained units. ``batches``: the
    calibration batches (iterated several times; padding tokens are left out of the fit).
    ``damping``: ridge strength relative to the mean diagonal of A^T A. ``bound``: largest
    accepted |m|. ``progress(done_layers, n_layers)`` after each layer.
    """
    return tune_mask_sets(model, batches, [(keep_heads, keep_neurons)], damping, bound,
                          progress)[0]


def tune_mask_sets(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                   mask_sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   damping: float = 1e-2, bound: float = 10.0,
                   progress: Progress | None = None) -> list[TuneResult]:
    """``tune_masks`` for several (keep_heads, keep_neurons) pairs in one pass over the
    layers: the unmasked model's runs and targets are shared; each set keeps its own masked
    stream. Identical sets are tuned once."""
    shape = arch.shape_of(model.config)
    sets = [(_check_keep("keep_heads", h, shape.n_layers, shape.n_heads),
             _check_keep("keep_neurons", n, shape.n_layers, shape.intermediate))
            for h, n in mask_sets]
    if damping < 0 or bound <= 0:
        raise ValueError(f"need damping >= 0 and bound > 0, got {damping} and {bound}")
    distinct: list[int] = []  # index into ``sets`` of the first copy of each distinct set
    slot: list[int] = []      # for each set, its position in ``distinct``
    for i, (h, n) in enumerate(sets):
        same = [j for j, d in enumerate(distinct)
                if torch.equal(sets[d][0], h) and torch.equal(sets[d][1], n)]
        slot.append(same[0] if same else len(distinct))
        if not same:
            distinct.append(i)
    batches = list(batches)
    additive = not arch.has_post_norms(model.config)
    L = shape.n_layers
    fits: list[list[tuple[ComponentFit, ComponentFit]]] = [[] for _ in distinct]

    with eval_mode(model), torch.no_grad():
        recorded = _record_layer_calls(model, batches)
        clean = [r.x0 for r in recorded]   # x: the unmasked adapted model
        masked = [list(clean) for _ in distinct]  # x' per set: earlier layers tuned
        for r in recorded:
            r.x0 = None  # the streams own it now
        for k in range(L):
            attn_targets, ffn_targets = _clean_targets(model, k, recorded, clean, additive)
            for j, i in enumerate(distinct):
                keep_h, keep_n = sets[i]
                heads = _fit_heads(model, k, recorded, masked[j], attn_targets, keep_h[k],
                                   additive, damping, bound)
                neurons = _fit_neurons(model, k, recorded, masked[j], ffn_targets,
                                       heads.values, keep_n[k], additive, damping, bound)
                fits[j].append((heads, neurons))
            del attn_targets, ffn_targets
            report_progress(progress, k + 1, L)
    results = [_result(f) for f in fits]
    return [results[j] for j in slot]


def _result(fits: list[tuple[ComponentFit, ComponentFit]]) -> TuneResult:
    return TuneResult(
        head_values=torch.stack([h.values.cpu() for h, _ in fits]).float(),
        neuron_values=torch.stack([n.values.cpu() for _, n in fits]).float(),
        error_binary=torch.tensor([[h.error_binary, n.error_binary] for h, n in fits],
                                  dtype=torch.float64),
        error_tuned=torch.tensor([[h.error_tuned, n.error_tuned] for h, n in fits],
                                 dtype=torch.float64),
        fallback=torch.tensor([[h.fallback, n.fallback] for h, n in fits]),
    )
