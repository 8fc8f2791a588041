"""The probe: each layer's measured utility, the ground truth a layer ranking is checked
against (floe.experiments.validation).

mode ``single``: for each layer l, train a HydraLoRA adapter on l alone under one budget
(same data sample, steps, lr and seed for every layer) and record the validation-loss
gain over the unadapted model, ``val_loss_before - val_loss_after``.
mode ``leave-one-out``: train all layers but l, and record the gain lost against the
all-layer adapter of the same seed, ``val_loss_after(all but l) - val_loss_after(all)``.

Every (layer, seed) cell is a sparse training run (floe.pipeline.sparse), cached and
resumable: the same probe twice reuses its cells, a killed probe resumes at the first
missing one. With ``storage`` several workers, each with its own cache, share the cells
through an Optuna RDB study (floe.experiments.shared): each cell is trained by one worker,
which records its result in the study, and every worker writes probe.json from the
study alone, byte for byte the same (nothing of the worker that writes it is in it; who
trained which cell is in the study, ``shared_progress``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Literal, cast, get_args

from floe.experiments.shared import adapter_checksum, share_cells
from floe.method.stats import mean_ci
from floe.pipeline.data import data_key
from floe.pipeline.setup import Setup
from floe.pipeline.sparse import (
    RunStoppedError,
    SparseConfig,
    model_shape,
    run_sparse_training,
    summary_of,
)
from floe.store import artifacts
from floe.store.artifacts import MeanCI, ProbeCell, ProbeHead, ProbeJson
from floe.store.config import option, to_dict
from floe.store.runs import DONE, Run, open_run, run_for
from floe.store.storage import open_storage, redact

__all__ = ["MODES", "PROBE_BUDGET", "SCHEDULES", "SUMMARY", "ProbeConfig", "ProbeMode", "ProbeSchedule",
           "cell_label", "cell_layers", "layer_gains", "plan_cells", "probe_key", "probe_run", "run_probe",
           "summary_head"]

SUMMARY = artifacts.PROBE
ProbeMode = Literal["single", "leave-one-out"]
MODES: tuple[str, ...] = get_args(ProbeMode)
# How the cells are scheduled: "cells" trains every (layer, seed) as its own cached run;
# the cheap schedules (floe.experiments.cheap_probe) load the model once: "halving" runs
# successive halving over the layers, "joint" trains all layers at once and reads each
# layer's gain with only its adapter switched on (leave-one-in).
ProbeSchedule = Literal["cells", "halving", "joint"]
SCHEDULES: tuple[str, ...] = get_args(ProbeSchedule)
_CHEAP_OPTIONS = ("schedule", "min_steps", "eta")
# The probe's default budget per cell (options given override it): small enough that the
# default probe of SmolLM2's 30 layers fits about 20 minutes of a quiet 2-core CPU
# (bench/bench_probe.py), with a learning rate high enough for 8 steps to move the loss.
PROBE_BUDGET: dict[str, dict[str, int | float]] = {"data": {"max_samples": 32, "max_length": 64},
                                                   "train": {"batch_size": 4, "lr": 1e-3}}
ALL = -1  # the cell of the all-layer adapter (leave-one-out's reference)


@dataclass
class ProbeConfig:
    """Which layers to probe, how, over which seeds, and where workers share the cells."""

    mode: ProbeMode = option("single", "single: adapt each layer alone and record its validation-loss "
                             "gain; leave-one-out: adapt all layers but one and record the gain lost")
    seeds: list[int] = option([42], "training seeds; with two or more, each layer's gain gets "
                              "a t-interval")
    layers: list[int] | None = option(None, "layers to probe (default: all)", cli=False)
    confidence: float = option(0.95, "confidence level of the per-layer t-intervals")
    storage: str | None = option(None, "Optuna RDB storage URL (e.g. postgresql://..., "
                                 "sqlite:////path/probe.db) through which several workers, "
                                 "each with its own cache, share this probe's cells")
    study_name: str | None = option(None, "study name in the storage (default: the run id)")
    schedule: ProbeSchedule = option("cells", "cells: each (layer, seed) its own cached training run; "
                                     "halving: one model load, successive halving over the layers "
                                     "(all get a few steps, the better half twice as many, ... up to "
                                     "the full budget); joint: one all-layer training, each layer's "
                                     "gain read with only its adapter on (leave-one-in)")
    min_steps: int = option(2, "halving: training steps of the first rung (every layer); the "
                            "first step of a run is learning-rate warm-up (lr 0), so 2 is the least")
    eta: int = option(2, "halving: keep 1/eta of the layers per rung, with eta times the steps")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown probe mode {self.mode!r}; choose among {', '.join(MODES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"give one or more distinct seeds, got {self.seeds}")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("the layer list is empty: name at least one layer, e.g. --layers 3,7")
            self.layers = sorted({int(k) for k in self.layers})
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown probe schedule {self.schedule!r}; choose among {', '.join(SCHEDULES)}")
        if self.schedule != "cells" and (self.mode != "single" or self.storage):
            raise ValueError(f"schedule {self.schedule} measures single layers in one process: "
                             "use it with mode single and without storage")
        if self.min_steps < 1 or self.eta < 2:
            raise ValueError(f"min_steps must be >= 1 and eta >= 2, got {self.min_steps} and {self.eta}")



# --------------------------------------------------------------------------- the grid
def plan_cells(config: ProbeConfig, n_layers: int) -> list[tuple[int, int]]:
    """(layer, seed) cells, seed-major (an early look covers every layer); leave-one-out
    first trains the all-layer reference of each seed."""
    layers = config.layers if config.layers is not None else list(range(n_layers))
    bad = [k for k in layers if not 0 <= k < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has {n_layers} layers (0..{n_layers - 1})")
    if config.mode == "leave-one-out" and n_layers < 2:
        raise ValueError("leave-one-out needs a model of at least 2 layers")
    reference = [ALL] if config.mode == "leave-one-out" else []
    return [(k, s) for s in config.seeds for k in reference + list(layers)]


def cell_layers(layer: int, mode: str, n_layers: int) -> list[int]:
    """The layers a cell's adapter is trained on."""
    if layer == ALL:
        return list(range(n_layers))
    return [layer] if mode == "single" else [k for k in range(n_layers) if k != layer]


def cell_label(layer: int, seed: int) -> str:
    """What a cell is, as the shared study lists its cells."""
    return f"{'all layers' if layer == ALL else f'layer {layer}'} seed {seed}"


def layer_gains(cells: list[ProbeCell], layers: list[int], seeds: list[int],
                confidence: float) -> tuple[list[float | None], list[MeanCI]]:
    """Per probed layer, the mean gain over its finished seeds and its t-interval."""
    means: list[float | None] = []
    cis: list[MeanCI] = []
    for k in layers:
        values = [c["gain"] for c in cells if c["layer"] == k and c["gain"] is not None]
        ci: MeanCI = {**mean_ci(values, confidence)} if values else {"n": 0, "mean": None}
        means.append(ci["mean"])
        cis.append(ci)
    return means, cis


def _with_gains(cells: list[ProbeCell], mode: str) -> list[ProbeCell]:
    """Fill each cell's gain from its own losses (single) or its seed's reference."""
    reference = {c["seed"]: c["val_loss_after"] for c in cells if c["layer"] == ALL}
    for c in cells:
        if c["layer"] == ALL:
            c["gain"] = None
        elif mode == "single":
            c["gain"] = c["val_loss_before"] - c["val_loss_after"]
        else:
            ref = reference.get(c["seed"])
            c["gain"] = None if ref is None else c["val_loss_after"] - ref
    return cells


# --------------------------------------------------------------------------- runs
def _unseeded(setup: Setup) -> dict:
    """The adapter and training as a probe's key and summary record them: the cells choose
    the layers and the training seed."""
    return {"adapter": to_dict(dataclasses.replace(setup.adapter, layers=None)),
            "train": {**to_dict(setup.training), "seed": None}}


def probe_key(setup: Setup, probe: ProbeConfig) -> dict:
    """What defines the probe (not the storage, which only shares the work)."""
    # The cheap schedule's options enter the key only when used: cell probes keep their keys.
    drop = ("storage", "study_name") + (_CHEAP_OPTIONS if probe.schedule == "cells" else ())
    space = {k: v for k, v in to_dict(probe).items() if k not in drop}
    return {**setup.key("probe"), **_unseeded(setup), "probe": space}


def probe_run(setup: Setup, probe: ProbeConfig) -> Run:
    return run_for("probe", probe_key(setup, probe))


def summary_head(setup: Setup, probe: ProbeConfig, n_layers: int, layers: list[int]) -> ProbeHead:
    """The part of probe.json every schedule writes alike: what was probed, and how."""
    return {"model": setup.model.model, "data": setup.data.data, "mode": probe.mode, "n_layers": n_layers,
            "layers": layers, "seeds": probe.seeds,
            "config": {"data": data_key(setup.data), **_unseeded(setup), "probe": to_dict(probe)}}


def _train_cell(setup: Setup, layer: int, seed: int, n_layers: int, mode: str, show_progress: bool) -> ProbeCell:
    adapted = cell_layers(layer, mode, n_layers)
    run = run_sparse_training(setup.replace(training=dataclasses.replace(setup.training, seed=seed)),
                              SparseConfig(layers=adapted), show_progress=show_progress,
                              wait_if_locked=True)
    summary = summary_of(run)
    if summary["val_loss_before"] is None or summary["val_loss_after"] is None:  # both None without val data
        raise ValueError("the probe measures validation loss: set val_samples >= 1")
    return {"layer": layer, "seed": seed, "train_run": run.id, "adapted": adapted,
            "val_loss_before": summary["val_loss_before"], "val_loss_after": summary["val_loss_after"],
            "gain": None, "train_seconds": summary["seconds"], "adapter_sha256": adapter_checksum(run)}


def _shared(run: Run, head: ProbeHead, probe: ProbeConfig, cells: list[tuple[int, int]], storage,
            train) -> None:
    """Train cells of the probe shared through ``storage`` until all are done anywhere;
    probe.json from the results the study records (each cell's ProbeCell, its training
    steps and the wall time of the worker that trained it)."""
    import optuna

    def compute(i: int) -> dict:
        start = time.perf_counter()
        try:
            cell = train(*cells[i])
        except RunStoppedError as e:  # a process of this cache stopped training it: take it again
            raise optuna.TrialPruned(str(e)) from None
        return {**cell, "steps": summary_of(open_run(cell["train_run"]))["steps"],
                "wall_seconds": time.perf_counter() - start}

    def write(results: list, partial: bool) -> None:
        done = [r for r in results if r is not None]
        _write_summary(run, head, probe, [_probe_cell(r) for r in done], [r["wall_seconds"] for r in done],
                       partial=partial)
        run.log(event="progress", stage="probe", done=len(done), total=len(cells))

    def progress(so_far: list) -> None:
        # Complete results are written once, as the final summary: a worker on the same
        # cache may have finished the run with them already.
        if None in so_far:
            write(so_far, partial=True)

    results = share_cells(storage, probe.study_name or run.id, [cell_label(*c) for c in cells], compute,
                          on_result=progress)
    write(results, partial=False)


_RECORD_ONLY = ("steps", "wall_seconds")  # in the study's record of a cell, not in probe.json's


def _probe_cell(result: dict) -> ProbeCell:
    """The probe.json part of a recorded cell result."""
    return cast(ProbeCell, {k: v for k, v in result.items() if k not in _RECORD_ONLY})


def run_probe(setup: Setup, probe: ProbeConfig, force: bool = False, show_progress: bool = True) -> Run:
    """Train every cell (or reuse it) and write probe.json. ``force`` rewrites the summary
    from the cells; it does not retrain them (their runs are cached by their own keys)."""
    shape = model_shape(setup.model)
    cells = plan_cells(probe, shape.n_layers)
    layers = probe.layers if probe.layers is not None else list(range(shape.n_layers))
    storage = open_storage(probe.storage) if probe.storage else None  # a bad URL: no run folder left
    run = probe_run(setup, probe)
    if run.status == DONE and not force:
        run.verify()
        return run

    def train(layer: int, seed: int) -> ProbeCell:
        return _train_cell(setup, layer, seed, shape.n_layers, probe.mode, show_progress)

    head = summary_head(setup, probe, shape.n_layers, layers)
    # Shared: no lock; several workers on one cache write the same probe.json.
    with (run.hold() if storage is None else contextlib.nullcontext(run)):
        run.log(event="start", stage="probe", total_steps=len(cells), resumed_from=0)
        if storage is not None:
            _shared(run, head, probe, cells, storage, train)
        else:
            _local(run, head, probe, cells, train)
        run.finish([SUMMARY])
    return run


def _local(run: Run, head: ProbeHead, probe: ProbeConfig, cells: list[tuple[int, int]], train) -> None:
    """Train (or reuse) every cell in order, rewriting probe.json after each."""
    done: list[ProbeCell] = []
    walls: list[float] = []
    for layer, seed in cells:
        start = time.perf_counter()
        done.append(train(layer, seed))
        walls.append(time.perf_counter() - start)
        run.log(event="progress", stage="probe", done=len(done), total=len(cells), layer=layer, seed=seed)
        _write_summary(run, head, probe, done, walls, partial=len(done) < len(cells))


def _write_summary(run: Run, head: ProbeHead, probe: ProbeConfig, done: list[ProbeCell], walls: list[float],
                   partial: bool) -> None:
    cells = _with_gains([c.copy() for c in done], probe.mode)
    gain, gain_ci = layer_gains(cells, head["layers"], probe.seeds, probe.confidence)
    slow = [w for w in walls if w > 1.0]  # a cached cell takes well under a second
    payload: ProbeJson = {
        **head, "partial": partial, "cells": cells, "gain": gain, "gain_ci": gain_ci,
        "base_val_loss": cells[0]["val_loss_before"] if cells else None,
        "cell_seconds": sum(slow) / len(slow) if slow else None,
        "storage": redact(probe.storage) if probe.storage else None}
    if payload["config"]["probe"]["storage"]:
        payload["config"]["probe"]["storage"] = payload["storage"]
    run.write_json(SUMMARY, payload)
