"""The cheap probe: every layer's measured gain with ONE model load.

``layer_adapter`` applies HydraLoRA to the given layers (seeded as a fresh training run
seeds it), and removes it on exit, leaving the base model as loaded: training layer l
after layer m gives what a freshly loaded model gives (tests/test_cheap_probe.py).

schedule ``halving`` (floe.method.halving): every layer is trained for ``min_steps``
steps, the better 1/eta for eta times as many, ... the last rung at the full budget (the
probe's training sample and batch size). Each rung trains its layers from scratch with
``max_steps`` set, so a last-rung measurement is exactly a full probe cell's.
schedule ``joint``: one adapter on every layer trained at the full budget; each layer's
gain is then read with only its adapter switched on (leave-one-in), n + 1 validation
passes and no other training.

The result is a probe run (kind ``probe``, keyed with its schedule) whose probe.json has
the usual fields plus ``ranking``: what policy ``probe`` reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from floe.adapters.hydralora import (
    HydraLoraConfig,
    HydraLoraLinear,
    apply_hydralora,
    remove_hydralora,
)
from floe.experiments.probe import SUMMARY, ProbeConfig, layer_gains, probe_run, summary_head
from floe.method.halving import halving_cost, halving_schedule, successive_halving
from floe.models import arch
from floe.models.load import load_model, resolve_device
from floe.pipeline.data import load_split, tokenize
from floe.pipeline.setup import Setup
from floe.pipeline.train import TrainConfig, total_steps, train, validation_loss
from floe.store.artifacts import ProbeCell, ProbeHead, ProbeJson
from floe.store.runs import Run, reuse_finished

__all__ = ["Bench", "only_layers_on", "layer_adapter", "measure_halving", "measure_joint",
           "run_cheap_probe", "train_layers"]


@contextlib.contextmanager
def layer_adapter(model, adapter: HydraLoraConfig, layers: list[int], seed: int):
    """HydraLoRA on ``layers`` for the block (initialised under ``seed``, as a sparse
    training run does), removed on exit whatever happens."""
    torch.manual_seed(seed)
    apply_hydralora(model, dataclasses.replace(adapter, layers=list(layers)))
    try:
        yield model
    finally:
        remove_hydralora(model)


@contextlib.contextmanager
def only_layers_on(model, layers: set[int]):
    """Leave-one-in: only the adapters of ``layers`` act inside the block."""
    blocks = arch.decoder_layers(model)
    switched = []
    for k, block in enumerate(blocks):
        for m in block.modules():
            if isinstance(m, HydraLoraLinear):
                switched.append((m, m.enabled))
                m.enabled = k in layers
    try:
        yield model
    finally:
        for m, state in switched:
            m.enabled = state


@dataclass(frozen=True)
class Bench:
    """The loaded model (its weights frozen), the tokenised sample and the unadapted
    model's validation loss: what every measurement of one cheap probe shares."""

    model: Any
    rows: list[dict]
    val: list[dict]
    pad_id: int
    base_loss: float


def train_layers(bench: Bench, adapter: HydraLoraConfig, training: TrainConfig,
                 layers: list[int], steps: int) -> float:
    """Validation loss after training an adapter on ``layers`` for ``steps`` steps (the
    adapter removed again before returning)."""
    with layer_adapter(bench.model, adapter, layers, training.seed):
        train(bench.model, bench.rows, dataclasses.replace(training, max_steps=steps), bench.pad_id,
              show_progress=False)
        return validation_loss(bench.model, bench.val, bench.pad_id)


def measure_halving(bench: Bench, setup: Setup, probe: ProbeConfig, layers: list[int], on_cell=None):
    """Successive halving over ``layers``; each measurement is the mean gain over seeds."""
    training = setup.training
    full = total_steps(len(bench.rows), training)
    schedule = halving_schedule(len(layers), full, min(probe.min_steps, full), probe.eta)
    first = schedule[0][1]
    if first - math.ceil(training.warmup_ratio * first) < 1:  # warm-up steps train at lr 0
        raise ValueError(f"the first rung's {first} step(s) are all learning-rate warm-up (lr 0): "
                         "raise --min-steps or lower --warmup-ratio")

    def measure(layer: int, steps: int) -> float:
        gains = [bench.base_loss - train_layers(bench, setup.adapter, dataclasses.replace(training, seed=s),
                                                [layer], steps)
                 for s in probe.seeds]
        if on_cell:
            on_cell(layer, steps)
        return statistics.fmean(gains)
    return successive_halving(layers, measure, schedule), schedule


def measure_joint(bench: Bench, setup: Setup, probe: ProbeConfig, layers: list[int], n_layers: int) -> dict:
    """One all-layer adapter per seed; each layer's gain with only its adapter on."""
    per_layer: dict[int, list[float]] = {k: [] for k in layers}
    model, training = bench.model, setup.training
    for s in probe.seeds:
        with layer_adapter(model, setup.adapter, list(range(n_layers)), s):
            train(model, bench.rows, dataclasses.replace(training, seed=s), bench.pad_id, show_progress=False)
            for k in layers:
                with only_layers_on(model, {k}):
                    per_layer[k].append(bench.base_loss - validation_loss(model, bench.val, bench.pad_id))
    gains = {k: statistics.fmean(v) for k, v in per_layer.items()}
    steps = total_steps(len(bench.rows), training)
    rung = {"steps": steps, "layers": layers, "gains": [gains[k] for k in layers], "kept": layers}
    ranking = sorted(layers, key=lambda k: (-gains[k], k))
    return {"ranking": ranking, "rungs": [rung], "measured": {k: {steps: g} for k, g in gains.items()},
            "per_seed": per_layer}


def _load_bench(setup: Setup, probe: ProbeConfig) -> tuple[Bench, list[int], int]:
    """The model loaded once, the sample, and the layers to measure (checked)."""
    model_cfg, data, training = setup.model, setup.data, setup.training
    model, tok = load_model(model_cfg.model, str(resolve_device(model_cfg.device)),
                            trust_remote_code=model_cfg.trust_remote_code, device_map=model_cfg.device_map)
    n_layers = arch.shape_of(model.config).n_layers
    layers = probe.layers if probe.layers is not None else list(range(n_layers))
    bad = [k for k in layers if not 0 <= k < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has {n_layers} layers (0..{n_layers - 1})")
    split = load_split(data)
    rows = tokenize(tok, split.train, data.max_length)
    val = tokenize(tok, split.val, data.max_length) if split.val else []
    if not val:
        raise ValueError("the probe measures validation loss: set val_samples >= 1")
    if len(rows) < training.batch_size:
        raise ValueError(f"the sample has {len(rows)} examples, fewer than the batch size "
                         f"{training.batch_size}: raise max_samples or lower batch_size")
    for p in model.parameters():
        p.requires_grad_(False)
    base_loss = validation_loss(model, val, tok.pad_token_id)
    return Bench(model, rows, val, tok.pad_token_id, base_loss), layers, n_layers


def run_cheap_probe(setup: Setup, probe: ProbeConfig, force: bool = False, show_progress: bool = True) -> Run:
    """Measure the layers with one model load (schedule halving or joint); a probe run."""
    if probe.schedule == "cells":
        raise ValueError("schedule cells trains each cell as its own run: use floe.experiments.probe.run_probe")
    run = probe_run(setup, probe)
    if reuse_finished(run, force):
        return run
    with run.hold():
        start = time.perf_counter()
        bench, layers, n_layers = _load_bench(setup, probe)
        run.log(event="start", stage="probe", total_steps=len(layers), resumed_from=0)
        if probe.schedule == "halving":
            done: list[int] = []

            def on_cell(k: int, s: int) -> None:
                done.append(k)
                run.log(event="progress", stage="probe", done=len(done), layer=k, steps=s)
            result, schedule = measure_halving(bench, setup, probe, layers, on_cell=on_cell)
            steps = halving_cost(schedule)
        else:
            result = measure_joint(bench, setup, probe, layers, n_layers)
            steps = total_steps(len(bench.rows), setup.training)
        result.update(train_steps=steps * len(probe.seeds), seconds=time.perf_counter() - start)
        _write_summary(run, summary_head(setup, probe, n_layers, layers), probe, bench.base_loss, result)
        run.finish([SUMMARY])
    return run


def _write_summary(run: Run, head: ProbeHead, probe: ProbeConfig, base_loss: float, result: dict) -> None:
    """probe.json: each layer's gain at the last rung it reached (comparable only within a
    rung; the ranking orders across rungs), the rungs, the ranking and the wall time."""
    def cell(k: int, seed: int | None, g: float) -> ProbeCell:
        return {"layer": k, "seed": seed, "train_run": None, "adapted": [k], "val_loss_before": base_loss,
                "val_loss_after": base_loss - g, "gain": g, "train_seconds": None,
                "steps": max(result["measured"][k])}
    if "per_seed" in result:  # joint: one cell per (layer, seed), so the gains get t-intervals
        cells = [cell(k, s, g) for k, gains in result["per_seed"].items() for s, g in zip(probe.seeds, gains)]
    else:  # halving: the mean over seeds at the layer's last rung
        cells = [cell(k, None, by_steps[max(by_steps)]) for k, by_steps in result["measured"].items()]
    gain, gain_ci = layer_gains(cells, head["layers"], probe.seeds, probe.confidence)
    payload: ProbeJson = {
        **head, "partial": False, "cells": cells, "gain": gain, "gain_ci": gain_ci, "base_val_loss": base_loss,
        "cell_seconds": None, "storage": None, "schedule": probe.schedule,
        "ranking": result["ranking"], "rungs": result["rungs"], "seconds": result["seconds"],
        "train_steps": result["train_steps"]}
    run.write_json(SUMMARY, payload)
