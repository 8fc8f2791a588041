"""The setup of a run: which model, which data, the adapter and the optimisation.

Every stage of a run of a model on data takes these four configs; ``Setup`` bundles them, so
a function takes one argument where it took four, and ``Setup.key`` is the part of a run key
they make (each run kind adds its own fields to it)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from floe import KEY_VERSIONS
from floe.adapters.hydralora import HydraLoraConfig
from floe.models.load import DEFAULT_MODEL, model_fingerprint, parse_device
from floe.pipeline.data import DataConfig, data_key
from floe.pipeline.train import TrainConfig
from floe.store.config import option, to_dict

__all__ = ["ModelConfig", "Setup"]


@dataclass
class ModelConfig:
    """Which model, on which device."""

    model: str = option(DEFAULT_MODEL, "embedded model (smollm2-135m, gemma3-270m), a local "
                        "folder, or a hub id (needs a network)")
    device: str = option("auto", "cuda, cuda:1, cpu, or auto (CUDA when present)")
    trust_remote_code: bool = option(False, "allow the model's own Python code (only for "
                                     "models you trust)")
    device_map: str | None = option(None, "models larger than one device: auto (spread the layers "
                                    "over the GPUs, then CPU, then disk), balanced, sequential, or "
                                    'a JSON map like {"model.layers.30": "cpu"}')

    def __post_init__(self):
        parse_device(self.device)  # a typo fails before any work (a missing GPU: at loading)


@dataclass(frozen=True)
class Setup:
    """The four configs of a run, frozen: a stage that needs a variant (the warm-up's
    all-layer adapter, a probe cell's layer) makes one with ``replace``."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    adapter: HydraLoraConfig = dataclasses.field(default_factory=HydraLoraConfig)
    training: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def key(self, kind: str) -> dict:
        """The run key's part these configs make, for a run of ``kind`` (not the device)."""
        return {"floe": KEY_VERSIONS[kind], "model": model_fingerprint(self.model.model),
                "data": data_key(self.data), "adapter": to_dict(self.adapter), "train": to_dict(self.training)}

    def replace(self, **changes) -> Setup:
        return dataclasses.replace(self, **changes)
