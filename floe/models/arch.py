"""All access to model architecture lives here: layers, projections, head counts.

Every other module asks this one for "the o_proj of layer k" or "how many K/V heads",
so supporting a new decoder family means adding one entry to ``ARCHITECTURES``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ARCHITECTURES", "ROLES", "ArchSpec", "Shape", "UnsupportedArchitectureError",
           "decoder_layers", "has_post_norms", "module_name", "projection", "role_suffix",
           "shape_of", "spec_for"]

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
    # Gemma normalises each sub-layer's output before the residual add, which makes the
    # residual stream non-linear in the masks (mask tuning fits the pre-norm output there).
    post_norms: bool = False


# Llama, Mistral, Qwen2 and Gemma 3 (text) share the Llama naming.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(),
    "mistral": ArchSpec(),
    "qwen2": ArchSpec(),
    "gemma3_text": ArchSpec(post_norms=True),
}


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


def spec_for(config) -> ArchSpec:
    model_type = _model_type(config)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Unsupported architecture {model_type!r}: FLoE supports "
            f"{', '.join(sorted(ARCHITECTURES))} (decoder-only models with separate "
            "q/k/v/o and gate/up/down projections)."
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


def projection(model: nn.Module, layer: int, role: str) -> nn.Linear:
    """The linear layer playing ``role`` (one of ROLES) in decoder layer ``layer``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    return _get(decoder_layers(model)[layer], getattr(spec_for(model.config), role))


def module_name(config, layer: int, role: str) -> str:
    """Fully qualified module name, e.g. ``model.layers.3.mlp.down_proj``."""
    spec = spec_for(config)
    return f"{spec.layers}.{layer}.{getattr(spec, role)}"


def role_suffix(config, role: str) -> str:
    """The module-name suffix of a role (``mlp.down_proj``), used for target lists."""
    return getattr(spec_for(config), role)


def has_post_norms(config) -> bool:
    return spec_for(config).post_norms
