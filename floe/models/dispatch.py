"""Models larger than one device: loading with an accelerate ``device_map`` (layers spread
over GPUs, or offloaded to CPU RAM or disk) and reading weights through the dispatch hooks.

accelerate wraps each placed module's ``forward`` (``_hf_hook``): it moves the inputs to
the module's execution device and, for offloaded modules, loads the weights only for the
call (outside it they are on the ``meta`` device). FLoE's own hooks are ordinary
``register_forward_(pre_)hook`` hooks, which run around that wrapped forward, so masks and
gradient captures work unchanged; code that reads a weight outside a forward must ask
``weight_of`` for it, and new parameters (adapters) must go to ``execution_device``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["OFFLOAD_FOLDER", "device_map_option", "execution_device", "is_dispatched", "weight_of"]

OFFLOAD_FOLDER = "offload"  # under the cache, for device maps that send modules to "disk"


def device_map_option(text: str | None):
    """The ``--device-map`` value for from_pretrained: None, a strategy ("auto",
    "balanced", "sequential"), or a JSON object {module name: device}."""
    if text in (None, ""):
        return None
    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    import json
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict):
        raise ValueError(f"--device-map takes auto, balanced, sequential or a JSON object like "
                         f'{{"model.layers.0": 0, "model.layers.1": "cpu"}}, got {text!r}')
    return mapping


def is_dispatched(model: nn.Module) -> bool:
    """True for a model loaded with a device_map (accelerate hooks place its parts)."""
    return bool(getattr(model, "hf_device_map", None))


def _align_hook(module: nn.Module):
    """accelerate's AlignDevicesHook on ``module`` (it may sit in a SequentialHook), or None."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if hasattr(h, "execution_device"):
            return h
    return None


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its hook's execution device, else its weight's device."""
    device = getattr(_align_hook(module), "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return next(module.parameters()).device


def weight_of(module: nn.Module) -> torch.Tensor:
    """The module's weight as a real tensor on its execution device, also when accelerate
    has offloaded it (then the weight is read from the offload store)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor), "a linear's weight is a tensor"
    if weight.device.type != "meta":
        return weight
    base = getattr(module, "base", None)
    if _align_hook(module) is None and isinstance(base, nn.Module):
        return weight_of(base)  # an adapter wrapper: the hook sits on the wrapped linear
    store = getattr(_align_hook(module), "weights_map", None)
    if store is None:
        raise ValueError("a weight is on the meta device but no offload store holds it")
    return store["weight"].to(execution_device(module))
