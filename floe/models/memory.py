"""Peak-memory formulas of FLoE's stages: pure functions of a model's shape and the options.

Every figure is a count of the tensors a stage keeps alive at its peak, from the model's
dimensions (h hidden, i FFN, H / H_kv heads of size d, V vocabulary, L layers), the token
count of one batch and the element width w of the activations (2 bytes for bf16 on CUDA,
4 for fp32 on CPU). Nothing is fitted to one model; docs/plan.md derives each term and
compares the result with peaks measured on a GPU.

Per token and decoder layer, autograd keeps for backward (all parameters frozen, so no
linear keeps its input unless an adapter or a hook does):
  - the fp32 input of both RMSNorms (they upcast): 2 x 4h;
  - attention (fused SDPA kernels): q, k, v and the output: w (2 H d + 2 H_kv d);
  - the gated MLP: gate output, its activation, up output: 3 w i;
  - per adapted projection with input size n: the dropout mask and the dropped copy,
    (1 + w) n (training); in eval the adapter's fp32 copy of its input, 4n.
Backward keeps one layer's gradients in flight on top (w (4h + 4i) per token), and the
loss keeps 12 bytes per token and vocabulary entry (the fp32 log-softmax, its gradient
and the NLL gradient). AdamW holds 16 bytes per trainable fp32 parameter (weight,
gradient, two moments).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from floe.models import arch

__all__ = ["GIB", "HEADROOM", "LOSS_BYTES", "ModelDims", "StageMemory", "adapter_parameters", "dims_of",
           "fisher_memory", "free_memory_bytes", "layer_activation_bytes", "projection_dims", "taylor_chunks_for",
           "taylor_memory", "training_memory", "tuning_memory"]

GIB = 2 ** 30
LOSS_BYTES = 12        # per token and vocabulary entry: fp32 log-softmax, its grad, NLL grad
HEADROOM = 0.9         # share of free memory a plan may use (allocator fragmentation, workspaces)
OPTIMIZER_BYTES = 16   # per trainable fp32 parameter: weight, gradient, two Adam moments


@dataclass(frozen=True)
class ModelDims:
    """What the formulas need of a model: its unit shape, vocabulary and parameter count."""

    shape: arch.Shape
    vocab: int
    parameters: int


def projection_dims(shape: arch.Shape) -> dict[str, tuple[int, int]]:
    """(in, out) of the seven projections of one decoder layer."""
    attn, kv = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    return {"q": (shape.hidden, attn), "k": (shape.hidden, kv), "v": (shape.hidden, kv),
            "o": (attn, shape.hidden), "gate": (shape.hidden, shape.intermediate),
            "up": (shape.hidden, shape.intermediate), "down": (shape.intermediate, shape.hidden)}


def _projection_parameters(shape: arch.Shape, roles=arch.ROLES) -> int:
    return sum(n_in * n_out for role, (n_in, n_out) in projection_dims(shape).items() if role in roles)


def dims_of(config) -> ModelDims:
    """ModelDims of a transformers config (no weights needed: a config.json is enough)."""
    cfg = getattr(config, "text_config", None) or config
    shape = arch.shape_of(cfg)
    vocab = int(cfg.vocab_size)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    per_layer = _projection_parameters(shape) + 2 * shape.hidden  # + the two norms
    params = vocab * shape.hidden * (1 if tied else 2) + shape.n_layers * per_layer + shape.hidden
    return ModelDims(shape, vocab, params)


def adapter_parameters(shape: arch.Shape, r: int, experts: int, targets) -> int:
    """Trainable parameters of HydraLoRA on one layer: shared A (r x in), M experts B
    (out x r) and, with M > 1, the router (M x in)."""
    dims = projection_dims(shape)
    router = experts if experts > 1 else 0
    return sum(r * dims[t][0] + experts * r * dims[t][1] + router * dims[t][0] for t in targets)


def layer_activation_bytes(shape: arch.Shape, width: int, adapted_inputs: int = 0,
                           adapter_bytes: int = 0) -> int:
    """Bytes per token one decoder layer keeps for backward; ``adapted_inputs`` is the
    summed input size of its adapted projections, each costing ``adapter_bytes``."""
    attention = width * (2 * shape.n_heads + 2 * shape.n_kv_heads) * shape.head_dim
    return 8 * shape.hidden + attention + 3 * width * shape.intermediate + adapter_bytes * adapted_inputs


def _adapted_inputs(shape: arch.Shape, targets) -> int:
    dims = projection_dims(shape)
    return sum(dims[t][0] for t in targets)


def _backward_working_bytes(shape: arch.Shape, width: int) -> int:
    return width * (4 * shape.hidden + 4 * shape.intermediate)


@dataclass
class StageMemory:
    """A stage's estimated peak, by part (bytes)."""

    parts: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def peak(self) -> float:
        return sum(self.parts.values())

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    @property
    def dominant(self) -> str:
        return max(self.parts, key=lambda part: self.parts[part])

    def gib(self) -> dict[str, float]:
        return {k: v / GIB for k, v in self.parts.items()}


def training_memory(dims: ModelDims, tokens: int, layers: list[int], r: int, experts: int,
                    targets, width: int, trainable: int | None = None) -> StageMemory:
    """Fine-tuning HydraLoRA on ``layers`` with AdamW on batches of ``tokens`` tokens.
    Backward stops at the lowest adapted layer: only the layers from there up keep
    activations, so the position of the layers matters, not only their number.
    ``trainable``: the adapter's parameter count when known exactly (else from the shape)."""
    shape = dims.shape
    lowest = min(layers)
    adapted = set(layers)
    n_in = _adapted_inputs(shape, targets)
    per_token = sum(layer_activation_bytes(shape, width, n_in if k in adapted else 0, 1 + width)
                    for k in range(lowest, shape.n_layers))
    return StageMemory({
        "weights": dims.parameters * width,
        "adapter + optimizer": OPTIMIZER_BYTES * (adapter_parameters(shape, r, experts, targets) * len(layers)
                                                  if trainable is None else trainable),
        "activations": tokens * (per_token + _backward_working_bytes(shape, width)),
        "logits": tokens * dims.vocab * LOSS_BYTES})


def _frozen_adapter_bytes(dims: ModelDims, adapter: tuple[int, int, tuple] | None) -> int:
    if adapter is None:
        return 0
    r, experts, targets = adapter
    return 4 * adapter_parameters(dims.shape, r, experts, targets) * dims.shape.n_layers


def taylor_memory(dims: ModelDims, tokens: int, width: int, chunks: int = 1,
                  adapter: tuple[int, int, tuple] | None = None) -> StageMemory:
    """Taylor costs on batches of ``tokens`` tokens, the layers' gradients gathered in
    ``chunks`` passes. The fp32 buffers hold one chunk's projection gradients; the graph
    runs from the chunk's lowest layer, so the first chunk (from layer 0) is the peak:
    every layer's activations, plus the inputs the hooks keep for the chunk's layers."""
    shape = dims.shape
    per_chunk = math.ceil(shape.n_layers / chunks)
    attn = shape.n_heads * shape.head_dim
    hooked = width * (2 * shape.hidden + attn + shape.intermediate)  # q/k/v, o, gate/up, down inputs
    per_token = shape.n_layers * layer_activation_bytes(shape, width) + per_chunk * hooked
    largest = max(n_in * n_out for n_in, n_out in projection_dims(shape).values())
    return StageMemory({
        "weights": dims.parameters * width + _frozen_adapter_bytes(dims, adapter),
        "gradient buffers": 4 * per_chunk * _projection_parameters(shape) + (4 + width) * largest,
        "activations": tokens * (per_token + _backward_working_bytes(shape, width)),
        "logits": tokens * dims.vocab * LOSS_BYTES},
        note=f"{chunks} pass(es) of {per_chunk} layer(s)")


def fisher_memory(dims: ModelDims, tokens: int, width: int,
                  adapter: tuple[int, int, tuple] | None = None) -> StageMemory:
    """Mask Fisher on the adapted model (eval mode): activation gradients only, through
    every layer; hooks keep the inputs of o_proj and down_proj."""
    shape = dims.shape
    n_in = _adapted_inputs(shape, adapter[2]) if adapter else 0
    hooked = width * (shape.n_heads * shape.head_dim + shape.intermediate)
    per_token = shape.n_layers * (layer_activation_bytes(shape, width, n_in, 4) + hooked)
    return StageMemory({
        "weights": dims.parameters * width + _frozen_adapter_bytes(dims, adapter),
        "activations": tokens * (per_token + _backward_working_bytes(shape, width)),
        "logits": tokens * dims.vocab * LOSS_BYTES})


def tuning_memory(dims: ModelDims, tokens: int, width: int, mask_sets: int = 2,
                  adapter: tuple[int, int, tuple] | None = None) -> StageMemory:
    """Least-squares mask tuning over all ``tokens`` scoring tokens (no backward): the
    clean and masked residual streams, the fp32 targets, one layer's FFN inputs, and the
    normal equations of the FFN (fp32 covariance, fp64 transients while solving)."""
    shape = dims.shape
    n = shape.intermediate
    return StageMemory({
        "weights": dims.parameters * width + _frozen_adapter_bytes(dims, adapter),
        "activations": tokens * ((1 + mask_sets) * width * shape.hidden + 2 * 4 * shape.hidden
                                 + width * n),
        "statistics buffers": 4 * n * n + 2 * 8 * n * n})


def taylor_chunks_for(dims: ModelDims, tokens: int, width: int, budget_bytes: float,
                      adapter: tuple[int, int, tuple] | None = None) -> int | None:
    """The smallest number of Taylor passes whose peak fits ``budget_bytes`` (None: even
    one layer per pass does not fit; the batch is too large)."""
    for chunks in range(1, dims.shape.n_layers + 1):
        if taylor_memory(dims, tokens, width, chunks, adapter).peak <= budget_bytes:
            return chunks
    return None


def free_memory_bytes(device) -> int:
    """Free memory of a device now: CUDA's free memory, or the host's available RAM."""
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
