"""All access to model architecture lives here: layers, projections, head counts.

Every other module asks this one for "the o_proj of layer k", "the rows of q in a fused
qkv_proj" or "how many K/V heads", so supporting a new decoder family means adding one
entry to ``ARCHITECTURES``.

Fused projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``): several roles name the same
module; each role owns a block of its output rows, in ``ROLES`` order (q, k, v; gate, up),
as the family's forward splits them. ``role_rows`` gives that block, so heads and neurons
own slices of the fused weights in the Taylor costs, the baselines and the adapters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from floe.models.dispatch import weight_of

__all__ = ["ARCHITECTURES", "MIXTURE_OF_EXPERTS", "ROLES", "ArchSpec", "Shape",
           "UnsupportedArchitectureError", "decoder_layers", "fused_with", "has_post_norms",
           "module_name", "projection", "residual_scale", "role_rows", "role_suffix",
           "role_weight", "shape_of", "spec_for"]

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of a decoder layer live, as dotted attribute paths."""

    layers: str = "model.layers"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    # Gemma 2/3 and OLMo-2 normalise each sub-layer's output before the residual add, which
    # makes the residual stream non-linear in the masks (mask tuning fits the pre-norm
    # output there).
    post_norms: bool = False
    # Granite scales each sub-layer's output before the residual add by this config field.
    residual_multiplier: str | None = None


_PHI3 = ArchSpec(q="self_attn.qkv_proj", k="self_attn.qkv_proj", v="self_attn.qkv_proj",
                 gate="mlp.gate_up_proj", up="mlp.gate_up_proj")

# Llama, Mistral, Qwen2/3 (Qwen3's per-head q/k norms sit inside attention), Gemma 2/3
# (text), OLMo-2 and Granite share the Llama naming; Phi-3 / Phi-3.5 fuse projections.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(),
    "mistral": ArchSpec(),
    "qwen2": ArchSpec(),
    "qwen3": ArchSpec(),
    "phi3": _PHI3,
    "gemma2": ArchSpec(post_norms=True),
    "gemma3_text": ArchSpec(post_norms=True),
    "olmo2": ArchSpec(post_norms=True),
    "granite": ArchSpec(residual_multiplier="residual_multiplier"),
}

# Refused with the reason: an MoE layer has no single FFN whose neurons see every token.
MIXTURE_OF_EXPERTS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "phimoe",
                      "deepseek_v2", "deepseek_v3", "dbrx", "jamba", "jetmoe")


class UnsupportedArchitectureError(ValueError):
    """Raised for a model family FLoE does not know how to mask."""


@dataclass(frozen=True)
class Shape:
    """The unit counts FLoE needs: heads and neurons per layer."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int

    @property
    def group(self) -> int:
        """Query heads per K/V head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads


def _model_type(config) -> str:
    return getattr(config, "model_type", type(config).__name__)


def _is_moe(config, model_type: str) -> bool:
    experts = [getattr(config, name, None) for name in ("num_local_experts", "num_experts")]
    return model_type in MIXTURE_OF_EXPERTS or any(isinstance(n, int) and n > 1 for n in experts)


def spec_for(config) -> ArchSpec:
    model_type = _model_type(config)
    if _is_moe(config, model_type):
        raise UnsupportedArchitectureError(
            f"Unsupported architecture {model_type!r}: mixture-of-experts models are not "
            "supported. FLoE masks the neurons of one dense FFN per layer, scored on every "
            "token; in an MoE layer each expert sees only the tokens routed to it, so "
            "per-neuron Fisher scores, Taylor costs and the layer's mask tuning are not "
            "defined the same way (and the router would change with the masks).")
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Unsupported architecture {model_type!r}: FLoE supports "
            f"{', '.join(sorted(ARCHITECTURES))} (dense decoder-only models with q/k/v/o "
            "and gate/up/down projections, separate or fused)."
        )
    return ARCHITECTURES[model_type]


def shape_of(config) -> Shape:
    spec_for(config)  # fail early and clearly on unknown families
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return Shape(
        n_layers=config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
    )


def _get(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get(model, spec_for(model.config).layers)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")


def projection(model: nn.Module, layer: int, role: str) -> nn.Module:
    """The module playing ``role`` (one of ROLES) in decoder layer ``layer``: a linear layer
    (or an adapter around one); for a fused role, the fused module (see ``role_rows``)."""
    _check_role(role)
    return _get(decoder_layers(model)[layer], getattr(spec_for(model.config), role))


def module_name(config, layer: int, role: str) -> str:
    """Fully qualified module name, e.g. ``model.layers.3.mlp.down_proj``."""
    spec = spec_for(config)
    return f"{spec.layers}.{layer}.{getattr(spec, role)}"


def role_suffix(config, role: str) -> str:
    """The module-name suffix of a role (``mlp.down_proj``), used for target lists."""
    _check_role(role)
    return getattr(spec_for(config), role)


def fused_with(config, role: str) -> tuple[str, ...]:
    """The roles sharing ``role``'s module, in output-row order (just ``(role,)`` if alone)."""
    path = role_suffix(config, role)
    return tuple(r for r in ROLES if role_suffix(config, r) == path)


def _width(shape: Shape, role: str) -> int:
    """Output features of a role: its rows in a fused weight."""
    return {"q": shape.n_heads * shape.head_dim, "k": shape.n_kv_heads * shape.head_dim,
            "v": shape.n_kv_heads * shape.head_dim, "o": shape.hidden,
            "gate": shape.intermediate, "up": shape.intermediate, "down": shape.hidden}[role]


def role_rows(config, role: str) -> slice | None:
    """The output rows of ``role`` in its fused module; None for a module of its own."""
    roles = fused_with(config, role)
    if len(roles) == 1:
        return None
    shape = shape_of(config)
    start = 0
    for r in roles:
        if r == role:
            return slice(start, start + _width(shape, r))
        start += _width(shape, r)
    raise AssertionError("unreachable: role is among the roles fused with it")


def role_weight(model: nn.Module, layer: int, role: str) -> torch.Tensor:
    """The pretrained weight rows of ``role`` in ``layer`` ([out, in]; a view)."""
    weight = weight_of(projection(model, layer, role))  # through adapters and offloading
    rows = role_rows(model.config, role)
    return weight if rows is None else weight[rows]


def has_post_norms(config) -> bool:
    return spec_for(config).post_norms


def residual_scale(config) -> float:
    """The factor on each sub-layer's output in the residual add (1 but for Granite)."""
    field = spec_for(config).residual_multiplier
    return 1.0 if field is None else float(getattr(config, field))
