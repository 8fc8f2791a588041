"""The memory plan: each stage's estimated peak on the chosen device, before anything loads.

``build_plan`` reads only the model's config.json (an embedded model, a local folder, a
folder holding only config.json, or a hub id with a network) and applies the formulas of
floe.models.memory to the options of the other commands. ``check_plan`` is what every
command that loads a model on a GPU calls first: it stops with the option to change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from floe.adapters.hydralora import HydraLoraConfig
from floe.models import memory
from floe.models.memory import GIB, HEADROOM, ModelDims, StageMemory
from floe.pipeline.data import DataConfig
from floe.pipeline.policies import layer_ranges
from floe.pipeline.score import ScoreConfig
from floe.pipeline.setup import Setup
from floe.pipeline.train import TrainConfig

__all__ = ["LABELS", "Plan", "PlanError", "PlanJson", "StageJson", "build_plan", "check_plan",
           "model_dims", "plan_lines", "stage_memory"]

LABELS = {"warmup": "warm-up", "taylor": "Taylor", "fisher": "Fisher", "tuning": "tuning",
          "training": "sparse training"}
# The option that shrinks each stage's dominant part.
KNOBS = {
    ("warmup", "activations"): "lower --batch-size (raise --grad-accum to keep the step) or --max-length",
    ("training", "activations"): "lower --batch-size (raise --grad-accum to keep the step) or "
                                 "--max-length, or adapt higher layers (backward stops at the lowest)",
    ("taylor", "gradient buffers"): "use --taylor-chunks auto",
    ("taylor", "activations"): "lower --score-batch-size",
    ("fisher", "activations"): "lower --score-batch-size",
    ("tuning", "activations"): "lower --score-samples",
    ("tuning", "statistics buffers"): "lower --score-samples",
}
WEIGHTS_KNOB = "use --device-map auto (spread the model over several GPUs or offload layers)"


class PlanError(ValueError):
    """A stage does not fit the device; the message names the option to change."""


class StageJson(TypedDict):
    peak_gib: float
    parts_gib: dict[str, float]
    dominant: str
    note: str


class PlanJson(TypedDict):
    """What ``floe plan --json`` prints."""

    model: str
    device: str
    device_memory_gib: float | None
    width_bytes: int
    layers: list[int]
    taylor_chunks: int | None
    stages: dict[str, StageJson]


@dataclass
class Plan:
    model: str
    device: str
    device_memory_gib: float | None
    width: int
    layers: list[int]
    taylor_chunks: int | None
    stages: dict[str, StageMemory] = field(default_factory=dict)

    def fits(self, stage: str) -> bool:
        budget = self.device_memory_gib
        return budget is None or self.stages[stage].peak_gib <= HEADROOM * budget

    def to_json(self) -> PlanJson:
        return {"model": self.model, "device": self.device, "device_memory_gib": self.device_memory_gib,
                "width_bytes": self.width, "layers": self.layers, "taylor_chunks": self.taylor_chunks,
                "stages": {name: {"peak_gib": round(s.peak_gib, 3),
                                  "parts_gib": {k: round(v, 3) for k, v in s.gib().items()},
                                  "dominant": s.dominant, "note": s.note}
                           for name, s in self.stages.items()}}


def model_dims(model: str, trust_remote_code: bool = False) -> ModelDims:
    """The model's dimensions from its config.json alone (weights are not read)."""
    from transformers import AutoConfig

    from floe.models.load import ModelNotFoundError, resolve_model_path
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model), trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelNotFoundError(f"could not read the config of model {model!r}: {e}") from e
    return memory.dims_of(config)


def _device_and_width(device: str) -> tuple[str, int]:
    """The device and activation width (bytes) the stages will run with. A CUDA device
    may be planned for on a machine without one (bf16, as load.default_dtype picks)."""
    import torch

    from floe.models.load import default_dtype, resolve_device
    if device.startswith("cuda") and not torch.cuda.is_available():
        return device, torch.bfloat16.itemsize
    dev = resolve_device(device)
    return str(dev), default_dtype(dev).itemsize


def _free_gib(device: str) -> float | None:
    import torch
    if device.startswith("cuda") and not torch.cuda.is_available():
        return None  # planned for a GPU elsewhere: only --device-memory says how much it has
    return memory.free_memory_bytes(device) / GIB


def stage_memory(dims: ModelDims, data: DataConfig, adapter: HydraLoraConfig, training: TrainConfig,
                 score: ScoreConfig, layers: list[int], width: int, taylor_chunks: int) -> dict[str, StageMemory]:
    """Every stage's estimate (pure: shapes and options in, bytes out)."""
    targets = tuple(adapter.targets)
    frozen = (adapter.r, adapter.experts, targets)
    train_tokens = training.batch_size * data.max_length
    score_tokens = score.score_batch_size * data.max_length
    every = list(range(dims.shape.n_layers))
    return {
        "warmup": memory.training_memory(dims, train_tokens, every, adapter.r, adapter.experts, targets, width),
        "taylor": memory.taylor_memory(dims, score_tokens, width, taylor_chunks, frozen),
        "fisher": memory.fisher_memory(dims, score_tokens, width, frozen),
        "tuning": memory.tuning_memory(dims, score.score_samples * data.max_length, width, 2, frozen),
        "training": memory.training_memory(dims, train_tokens, layers, adapter.r, adapter.experts, targets,
                                           width),
    }


def build_plan(setup: Setup, score: ScoreConfig, layers: list[int] | None = None, k: int = 8,
               device_memory_gib: float | None = None, dims: ModelDims | None = None) -> Plan:
    """The plan of every stage. Training adapts ``layers``, or else the top ``k`` layers
    (the cheapest k: a selection reaching lower trains with more memory). Device memory:
    the given GiB, else the chosen device's free memory now."""
    model_cfg, data, adapter, training = setup.model, setup.data, setup.adapter, setup.training
    dims = dims or model_dims(model_cfg.model, model_cfg.trust_remote_code)
    n_layers = dims.shape.n_layers
    if layers is None:
        layers = list(range(max(0, n_layers - k), n_layers))
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or '(none)'} invalid: the model has {n_layers} layers")
    device, width = _device_and_width(model_cfg.device)
    if device_memory_gib is None:
        device_memory_gib = _free_gib(device)
    if score.taylor_chunks == "auto":
        if device_memory_gib is None:
            raise ValueError(f"--taylor-chunks auto plans for the device's memory: {device} is not on this "
                             "machine, so give --device-memory GIB")
        found = memory.taylor_chunks_for(dims, score.score_batch_size * data.max_length, width,
                                         HEADROOM * device_memory_gib * GIB,
                                         (adapter.r, adapter.experts, tuple(adapter.targets)))
        chunks = found or n_layers
    else:
        chunks = int(score.taylor_chunks)
    chunks = min(chunks, n_layers)
    plan = Plan(model_cfg.model, device, device_memory_gib, width, sorted(layers), chunks)
    plan.stages = stage_memory(dims, data, adapter, training, score, plan.layers, width, chunks)
    return plan


def check_plan(plan: Plan, stages) -> None:
    """Raise PlanError for the first of ``stages`` whose peak does not fit, naming the knob."""
    for name in stages:
        if plan.fits(name):
            continue
        stage = plan.stages[name]
        knob = WEIGHTS_KNOB if stage.dominant == "weights" else KNOBS.get((name, stage.dominant), WEIGHTS_KNOB)
        raise PlanError(
            f"{LABELS[name]} needs about {stage.peak_gib:.1f} GiB ({stage.dominant} "
            f"{stage.parts[stage.dominant] / GIB:.1f} GiB) but {plan.device} has "
            f"{plan.device_memory_gib:.1f} GiB free ({HEADROOM:.0%} usable): {knob}; "
            "--no-plan-check skips this check")


def plan_lines(plan: Plan) -> list[str]:
    """The plan as text: one line per stage, its peak and its parts, largest first."""
    budget = "" if plan.device_memory_gib is None else f", {plan.device_memory_gib:.1f} GiB free"
    lines = [f"{plan.model} on {plan.device} ({plan.width}-byte activations{budget}); "
             f"training layers {layer_ranges(plan.layers)}"]
    for name, stage in plan.stages.items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(stage.gib().items(), key=lambda kv: -kv[1]))
        verdict = "" if plan.device_memory_gib is None else ("  fits" if plan.fits(name) else "  DOES NOT FIT")
        note = f" [{stage.note}]" if stage.note else ""
        lines.append(f"  {LABELS[name]:>15}: {stage.peak_gib:6.2f} GiB  ({parts}){note}{verdict}")
    return lines
