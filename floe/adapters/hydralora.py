"""HydraLoRA: one shared A, M expert B's and a softmax router per adapted linear layer.

y = W x + (alpha / r) * sum_i w_i(x) * B_i (A x'),  w = softmax(R x'),  x' = dropout(x);
the router reads the same (dropped-out) input as A, in the same matmul; softmax in fp32.

On a fused projection (Phi-3's qkv_proj, gate_up_proj) each targeted role gets its own
adapter updating only that role's output rows (``arch.role_rows``), as on a model with
separate projections; adapters of the roles sharing a module wrap one another.

A self-contained wrapper rather than a peft tuner: peft's custom-module hook keys on the
base layer's class (it would reroute every nn.Linear) and its LoRA layer API carries
DoRA/rsLoRA arguments that shift between releases. peft is still the reference: with
M=1 and the same weights this module equals peft's LoRA (tests/test_hydralora.py), and
exports include a peft ``LoraConfig`` for plain-LoRA users.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from floe.models import arch
from floe.models.dispatch import execution_device
from floe.store.config import option, to_dict

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "HydraLoraConfig", "HydraLoraLinear",
           "adapted_layers", "adapter_state_dict", "adapters_disabled", "apply_hydralora",
           "base_layer", "load_adapter", "read_adapter_config", "remove_hydralora", "role_adapter", "save_adapter",
           "trainable_parameters"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class HydraLoraConfig:
    """HydraLoRA adapter settings (defaults: the paper's Table 6)."""

    r: int = option(8, "adapter rank r (shared A is r x in, each expert B is out x r)")
    alpha: float = option(32.0, "scaling numerator: the update is multiplied by alpha / r")
    dropout: float = option(0.05, "dropout on the adapter input during training")
    experts: int = option(4, "number of B experts M (M=1 is plain LoRA, no router)")
    targets: list[str] = option(["gate", "up", "down"],
                                "projections to adapt, among q,k,v,o,gate,up,down")
    layers: list[int] | None = option(None, "decoder layers to adapt (None: all layers)", cli=False)

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"rank r must be >= 1, got {self.r}")
        if self.experts < 1:
            raise ValueError(f"experts must be >= 1, got {self.experts}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (alpha 0 turns the adapter off), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in arch.ROLES]
        if bad or not self.targets:
            raise ValueError(f"unknown target(s) {bad or '(none)'}; choose among {arch.ROLES}")
        if self.layers is not None:
            self.layers = sorted({int(k) for k in self.layers})


class HydraLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a HydraLoRA update; starts equal to the base layer.

    ``rows`` (start, stop): the update covers only these output rows of the base (one
    role of a fused projection); None: all of them.
    """

    def __init__(self, base: nn.Linear | HydraLoraLinear, r: int, alpha: float, dropout: float, experts: int,
                 rows: tuple[int, int] | None = None):
        super().__init__()
        self.base = base
        self.r, self.experts, self.scaling = r, experts, alpha / r
        self.rows = rows
        out = base.out_features if rows is None else rows[1] - rows[0]
        # Low-precision bases keep fp32 adapters (as peft does) so small updates survive.
        dtype = base.weight.dtype if base.weight.dtype == torch.float64 else torch.float32
        device = execution_device(base)  # not meta when offloaded
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(experts, out, r, device=device, dtype=dtype))
        self.lora_router = (nn.Parameter(torch.empty(experts, base.in_features, device=device, dtype=dtype))
                            if experts > 1 else None)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if self.lora_router is not None:
            nn.init.kaiming_uniform_(self.lora_router, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    # The wrapper stands in for the linear it wraps (Taylor costs read .weight).
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        xd = self.dropout(x.to(self.lora_A.dtype))
        if self.lora_router is None:
            delta = (xd @ self.lora_A.T) @ self.lora_B[0].T
        else:
            # A and the router read the same input in ONE matmul, so autograd stores that
            # input once; a separate router matmul on x would keep its own copy of every
            # adapted layer's input (+9 % step memory on SmolLM2, ~+20 % on a 7B shape).
            hz = xd @ torch.cat([self.lora_A, self.lora_router]).T
            h, logits = hz.split([self.r, self.experts], dim=-1)
            w = torch.softmax(logits.float(), dim=-1).to(h.dtype)  # fp32 softmax
            # sum_i w_i B_i h == [w_1 h, ..., w_M h] @ [B_1^T; ...; B_M^T]: one matmul.
            mixed = (w.unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)
            delta = mixed @ self.lora_B.transpose(1, 2).reshape(-1, self.lora_B.shape[1])
        delta = (delta * self.scaling).to(y.dtype)
        if self.rows is not None:  # zero outside this role's rows of the fused output
            delta = nn.functional.pad(delta, (self.rows[0], self.out_features - self.rows[1]))
        return y + delta

    def expert_updates(self) -> torch.Tensor:
        """Delta W_i = (alpha/r) B_i A for every expert, shape (M, out, in) (out: the rows)."""
        return self.scaling * self.lora_B @ self.lora_A


def base_layer(module: nn.Module) -> nn.Module:
    """The pretrained linear inside any adapters wrapped around it."""
    while isinstance(module, HydraLoraLinear):
        module = module.base
    return module


def role_adapter(model: nn.Module, layer: int, role: str) -> HydraLoraLinear | None:
    """The adapter of ``role`` in ``layer`` (None if that role is not adapted)."""
    rows = arch.role_rows(model.config, role)
    want = None if rows is None else (rows.start, rows.stop)
    module = arch.projection(model, layer, role)
    while isinstance(module, HydraLoraLinear):
        if module.rows == want:
            return module
        module = module.base
    return None


def _adapted_modules(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, HydraLoraLinear):
            yield name, module


def apply_hydralora(model: nn.Module, config: HydraLoraConfig) -> list[str]:
    """Wrap the target projections of the chosen layers; freeze everything else.

    Returns the names of the wrapped modules. The model's outputs are unchanged (B = 0).
    """
    if any(True for _ in _adapted_modules(model)):
        raise ValueError("model already has HydraLoRA adapters")
    shape = arch.shape_of(model.config)
    layers = list(range(shape.n_layers)) if config.layers is None else config.layers
    out_of_range = [k for k in layers if not 0 <= k < shape.n_layers]
    if out_of_range or not layers:
        raise ValueError(f"layers {out_of_range or '(none)'} invalid: the model has "
                         f"{shape.n_layers} layers (0..{shape.n_layers - 1})")
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for k in layers:
        block = arch.decoder_layers(model)[k]
        for role in config.targets:
            path = arch.role_suffix(model.config, role)
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            rows = arch.role_rows(model.config, role)
            wrapper = HydraLoraLinear(getattr(parent, attr), config.r, config.alpha, config.dropout,
                                      config.experts, None if rows is None else (rows.start, rows.stop))
            # New modules start in training mode: follow the model's (no dropout in eval).
            setattr(parent, attr, wrapper.train(model.training))
            names.append(arch.module_name(model.config, k, role))
    return list(dict.fromkeys(names))


def remove_hydralora(model: nn.Module) -> int:
    """Unwrap every adapter, putting the pretrained linears back (the model is then the
    base model again, still frozen). Returns the number of modules unwrapped."""
    wrapped = [name for name, _ in _adapted_modules(model)]
    for name in sorted(wrapped, key=len):  # outer wrappers first: each unwraps its chain
        parent_path, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        module = getattr(parent, attr, None)
        if isinstance(module, HydraLoraLinear):
            setattr(parent, attr, base_layer(module))
    return len(wrapped)


def adapted_layers(model: nn.Module) -> list[int]:
    """Indices of decoder layers that carry at least one adapter."""
    layers = arch.decoder_layers(model)
    return [k for k, block in enumerate(layers)
            if any(isinstance(m, HydraLoraLinear) for m in block.modules())]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model: every adapter is bypassed inside the block."""
    modules = [m for _, m in _adapted_modules(model)]
    previous = [m.enabled for m in modules]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m, state in zip(modules, previous):
            m.enabled = state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (A, B experts, router), keyed by full parameter name."""
    return {n: p.detach() for n, p in model.named_parameters() if ".lora_" in n}


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(model: PreTrainedModel, config: HydraLoraConfig, folder: str | Path,
                 extra: dict | None = None) -> Path:
    """Write adapter weights (safetensors) and config (JSON) into ``folder`` atomically."""
    from floe.store.runs import atomic_save_tensors, atomic_write_json  # runs imports none of ours

    folder = Path(folder)
    atomic_save_tensors(folder / ADAPTER_WEIGHTS, adapter_state_dict(model))
    payload: dict[str, Any] = {"adapter": to_dict(config), "model_type": model.config.model_type}
    payload["adapter"]["layers"] = adapted_layers(model)
    payload.update(extra or {})
    atomic_write_json(folder / ADAPTER_CONFIG, payload)
    return folder


def read_adapter_config(folder: str | Path) -> HydraLoraConfig:
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no adapter found in {folder}: {ADAPTER_CONFIG} is missing")
    return HydraLoraConfig(**json.loads(path.read_text())["adapter"])


def load_adapter(model: nn.Module, folder: str | Path) -> HydraLoraConfig:
    """Attach the saved adapter in ``folder`` to a base model and load its weights."""
    config = read_adapter_config(folder)
    apply_hydralora(model, config)
    from floe.store.runs import load_tensors  # CorruptRunError, not SafetensorError, if truncated
    tensors = load_tensors(Path(folder) / ADAPTER_WEIGHTS)
    own = dict(model.named_parameters())
    expected = set(adapter_state_dict(model))
    if set(tensors) != expected:
        missing, unexpected = expected - set(tensors), set(tensors) - expected
        raise ValueError(f"adapter in {folder} does not fit this model: "
                         f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise ValueError(f"adapter tensor {name} has shape {tuple(value.shape)}, "
                                 f"the model expects {tuple(own[name].shape)}")
            own[name].copy_(value)
    return config
