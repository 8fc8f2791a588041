"""Sparse HydraLoRA fine-tuning on the chosen layers (the point of FLoE, METHOD 8).

The layers come from a score run's ranking under a policy (top-k), or from an explicit
list. Training reuses ``floe.pipeline.train.train``; the result is a cached, resumable run of kind
``train`` holding the adapter, a summary and the checkpoint. Under ``accelerate launch``
every process calls ``run_sparse_training``; only the main one owns the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora, save_adapter, trainable_parameters
from floe.models import arch
from floe.models.load import load_model, model_fingerprint, resolve_device
from floe.pipeline.data import DataConfig, data_key, load_split, tokenize
from floe.pipeline.policies import MEASURED, POLICIES, check_policy, open_probe_run, ranking_for, selected_layers
from floe.pipeline.score import load_layers, open_score_run
from floe.pipeline.setup import ModelConfig, Setup
from floe.pipeline.train import train, validation_loss
from floe.store import artifacts
from floe.store.artifacts import TrainJson
from floe.store.config import option
from floe.store.runs import DONE, Run, RunLockedError, read_json, reuse_finished, run_for

__all__ = ["ADAPTER_DIR", "SUMMARY", "PeakMemory", "ReportingRun", "RunStoppedError", "SparseConfig",
           "check_same_model", "layer_scores", "load_trained", "max_rank", "model_shape", "prepare_sparse",
           "probe_run_defaults", "rank_and_world_size", "resolve_layers", "run_sparse_training",
           "score_run_defaults", "sparse_run", "summary_of", "train_key"]

ADAPTER_DIR = "adapter"
SUMMARY = artifacts.TRAIN



@dataclass
class SparseConfig:
    """Which layers get adapters: the top-k of a score run's ranking, or an explicit list."""

    score_run: str | None = option(None, "id of a finished score run (floe analyze) whose "
                                   "ranking picks the layers")
    policy: str = option("floe", "ranking to take the top-k layers from", choices=tuple(POLICIES))
    k: int = option(8, "number of layers to adapt (ignored by policy 'all')")
    layers: list[int] | None = option(None, "explicit decoder layers to adapt, e.g. 3,7,12 "
                                      "(overrides score run and policy)", cli=False)
    random_seed: int | None = option(None, "policy random: draw k layers with this seed instead "
                                     "of taking the score run's seeded random ranking")
    probe_run: str | None = option(None, "policy probe: id of a finished probe run (floe probe) "
                                   "whose measured per-layer gains rank the layers")

    def __post_init__(self):
        check_policy(self.policy)
        if self.layers is not None:
            if not self.layers:
                raise ValueError("the layer list is empty: name at least one layer, e.g. --layers 3,7")
            self.layers = sorted({int(k) for k in self.layers})
        elif self.k < 1:
            raise ValueError(f"k must be >= 1 (the number of layers to adapt), got {self.k}")
        elif self.policy in MEASURED and self.probe_run is None:
            raise ValueError(f"policy {self.policy} ranks layers by a probe run: give --probe-run ID "
                             "(a run of floe probe)")
        elif self.score_run is None and self.policy not in MEASURED and not self._own_random_draw:
            raise ValueError("say which layers to adapt: --score-run ID (with --policy and --k), "
                             "--policy probe --probe-run ID, or an explicit --layers list")
        if self.random_seed is not None and self.policy != "random":
            raise ValueError(f"--random-seed draws layers for policy random, not {self.policy!r}")

    @property
    def _own_random_draw(self) -> bool:
        return self.policy == "random" and self.random_seed is not None


# --------------------------------------------------------------------------- layer choice
def layer_scores(run: Run) -> dict:
    """The parts of a scoring worth keeping with an adapter: scores and rankings."""
    layers = load_layers(run)
    kept = {k: layers[k] for k in ("layer_scores", "ranking", "layer_scores_without_refinement",
                                   "ranking_without_refinement", "beta", "ratio", "seed") if k in layers}
    return {"score_run": run.id, **kept}


def score_run_defaults(score_run: str) -> dict:
    """The model and data name the score run was computed on (defaults for training)."""
    warm = open_score_run(score_run).config["warmup"]
    return {"model": warm["model"]["model"], "data": warm["data"]["data"]}


def probe_run_defaults(probe_run: str) -> dict:
    """The model and data name a probe run measured (defaults for training)."""
    config = open_probe_run(probe_run).config
    return {"model": config["model"]["model"], "data": config["data"]["data"]}


def _selecting_run(sparse: SparseConfig) -> Run | None:
    """The run whose ranking picks the layers: the probe run for a measured policy, else
    the score run (None for explicit layers or an own random draw)."""
    if sparse.layers is not None:
        return None
    if sparse.policy in MEASURED:
        assert sparse.probe_run is not None, "SparseConfig requires a probe run for a measured policy"
        return open_probe_run(sparse.probe_run)
    return open_score_run(sparse.score_run) if sparse.score_run is not None else None


def resolve_layers(sparse: SparseConfig, n_layers: int) -> list[int]:
    """The sorted layer list to adapt, checked against the model's depth."""
    if sparse.layers is not None:
        bad = [k for k in sparse.layers if not 0 <= k < n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the model has {n_layers} layers "
                             f"(0..{n_layers - 1})")
        return list(sparse.layers)
    if sparse.policy == "all":
        return list(range(n_layers))
    if sparse.k > n_layers:
        raise ValueError(f"k={sparse.k} is larger than the model's {n_layers} layers")
    if sparse._own_random_draw:
        return sorted(random.Random(sparse.random_seed).sample(range(n_layers), sparse.k))
    selecting = _selecting_run(sparse)
    assert selecting is not None, "SparseConfig requires a score or probe run for this policy"
    ranking = ranking_for(selecting, sparse.policy)
    if sparse.policy in MEASURED:
        if not set(ranking) <= set(range(n_layers)):
            raise ValueError(f"probe run {sparse.probe_run} measured layers {sorted(ranking)}, but "
                             f"this model has {n_layers}: it was measured on another model")
        if sparse.k > len(ranking):
            raise ValueError(f"k={sparse.k}, but probe run {sparse.probe_run} measured only "
                             f"{len(ranking)} layers: lower k or probe every layer")
    elif sorted(ranking) != list(range(n_layers)):
        raise ValueError(f"score run {sparse.score_run} ranks {len(ranking)} layers, but this "
                         f"model has {n_layers}: it was scored on another model")
    return selected_layers(sparse.policy, ranking, sparse.k)  # spread: evenly spaced at k


def check_same_model(sparse: SparseConfig, fingerprint: dict) -> None:
    """A ranking is only meaningful for the model it was computed on."""
    run = _selecting_run(sparse)
    if run is None:
        return
    measured = sparse.policy in MEASURED
    scored = run.config["model"] if measured else run.config["warmup"]["model"]
    if scored != fingerprint:
        what = f"probe run {run.id} measured" if measured else f"score run {run.id} was computed on"
        raise ValueError(f"{what} {scored.get('model')}, not {fingerprint.get('model')}: "
                         "train the model it ranked")


# --------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or on CPU the peak resident set size
    sampled every 20 ms above the level at entry (ru_maxrss is process-wide and monotonic,
    so it cannot separate one run from the model load before it)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes, self.source = device, 0, ""
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, base: int) -> None:
        while not self._stop.wait(0.02):
            self.peak_bytes = max(self.peak_bytes, self._rss() - base)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "torch.cuda.max_memory_allocated"
        elif Path("/proc/self/statm").exists():
            self.source = "peak RSS above the level at start (sampled)"
            self._thread = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
            self._thread.start()
        else:  # no /proc (macOS): whole-process peak
            self.source = "process ru_maxrss"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, 0)
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return False


# --------------------------------------------------------------------------- the run
@dataclass
class ReportingRun(Run):
    """A Run whose progress records also go to a callback (e.g. an Optuna trial).

    The callback gets the record and ``validate()``, the held-out loss of the model being
    trained at that moment (None without validation data).
    """

    on_record: Callable[[dict, Callable[[], float | None]], None] | None = None
    validate: Callable[[], float | None] = lambda: None

    def log(self, **record) -> None:
        super().log(**record)
        if self.on_record is not None:
            self.on_record(record, self.validate)


def _validator(model, val: list[dict], pad_id: int) -> Callable[[], float | None]:
    def validate() -> float | None:
        if not val:
            return None
        loss = validation_loss(model, val, pad_id)
        model.train()  # validation_loss leaves eval mode; training goes on after it
        return loss
    return validate


# The loss before training is the base model's: HydraLoRA's B starts at zero, so a fresh adapter
# adds exactly 0.0 wherever it sits. A process training many cells on one model and sample (a
# compare, a probe) measures it once. Keyed by what the loss depends on, the device included.
_LOSS_BEFORE: dict[str, float] = {}


def _loss_before_key(model_cfg: ModelConfig, data: DataConfig, device: torch.device) -> str:
    return json.dumps({"model": model_fingerprint(model_cfg.model), "device_map": model_cfg.device_map,
                       "data": data_key(data), "device": str(device)}, sort_keys=True)


def loss_before_training(model, val: list[dict], pad_id: int, key: str) -> float:
    """The held-out loss of a model whose adapters are still at their zero start (memoized)."""
    if key not in _LOSS_BEFORE:
        _LOSS_BEFORE[key] = validation_loss(model, val, pad_id)
    return _LOSS_BEFORE[key]


def train_key(setup: Setup, sparse: SparseConfig) -> dict:
    """Everything that changes the trained adapter (the layers resolved in ``setup.adapter``),
    plus provenance."""
    assert setup.adapter.layers is not None, "the setup's adapter has its layers resolved"
    selection = {"policy": sparse.policy if sparse.layers is None else "explicit",
                 "k": len(setup.adapter.layers), "score_run": sparse.score_run}
    if sparse._own_random_draw and sparse.layers is None:
        selection["random_seed"] = sparse.random_seed
    if sparse.policy in MEASURED and sparse.layers is None:  # other selections keep their keys
        selection["probe_run"] = sparse.probe_run
    return {**setup.key("train"), "selection": selection}


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch, (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _process_device(model_cfg: ModelConfig) -> str:
    """Each DDP process loads the model onto its own GPU; CPU stays CPU."""
    device = resolve_device(model_cfg.device)
    if device.type == "cuda" and device.index is None and rank_and_world_size()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return str(device)


def model_shape(model_cfg: ModelConfig) -> arch.Shape:
    from transformers import AutoConfig

    from floe.models.load import resolve_model_path
    return arch.shape_of(AutoConfig.from_pretrained(
        resolve_model_path(model_cfg.model), trust_remote_code=model_cfg.trust_remote_code))


def max_rank(shape: arch.Shape, targets: list[str]) -> int:
    """The smallest in/out dimension among the adapted projections: a rank above it is not
    low rank any more."""
    attn, kv = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    dims = {"q": (shape.hidden, attn), "k": (shape.hidden, kv), "v": (shape.hidden, kv),
            "o": (attn, shape.hidden), "gate": (shape.hidden, shape.intermediate),
            "up": (shape.hidden, shape.intermediate), "down": (shape.intermediate, shape.hidden)}
    return min(min(dims[t]) for t in targets)


def prepare_sparse(model_cfg: ModelConfig, adapter: HydraLoraConfig,
                   sparse: SparseConfig) -> HydraLoraConfig:
    """The adapter config with the chosen layers filled in (checks model, layers and rank)."""
    check_same_model(sparse, model_fingerprint(model_cfg.model))
    shape = model_shape(model_cfg)
    limit = max_rank(shape, adapter.targets)
    if adapter.r > limit:
        raise ValueError(f"rank r={adapter.r} is outside the range this model allows: the "
                         f"smallest adapted dimension of {','.join(adapter.targets)} is {limit}")
    return dataclasses.replace(adapter, layers=resolve_layers(sparse, shape.n_layers))


def sparse_run(setup: Setup, sparse: SparseConfig) -> tuple[Run, Setup]:
    """The run of a sparse training, and the setup with its layers resolved."""
    setup = setup.replace(adapter=prepare_sparse(setup.model, setup.adapter, sparse))
    return run_for("train", train_key(setup, sparse)), setup


class RunStoppedError(RuntimeError):
    """The process computing a run we waited for stopped before finishing it."""


def _wait_for(run: Run, poll_s: float = 2.0) -> None:
    """Another process computes this run: wait until it stops, then use its result."""
    while run.is_locked():
        time.sleep(poll_s)
    if run.status != DONE:
        raise RunStoppedError(f"run {run.id} was being computed by another process that stopped "
                           f"with status {run.status}; run the command again to resume it")


def run_sparse_training(setup: Setup, sparse: SparseConfig, force: bool = False,
                        show_progress: bool = True, on_record: Callable | None = None,
                        wait_if_locked: bool = False) -> Run:
    """Train HydraLoRA on the chosen layers only (or reuse the finished run). Resumable.

    ``on_record`` sees every progress record (used by the rank search to report losses and
    prune); ``wait_if_locked`` waits for a concurrent process computing the same run.
    """
    run, setup = sparse_run(setup, sparse)
    if reuse_finished(run, force):
        return run
    main = rank_and_world_size()[0] == 0
    run = ReportingRun(run.path, on_record=on_record)
    with contextlib.ExitStack() as stack:
        if main:  # other DDP processes only read the run (its checkpoint)
            try:
                stack.enter_context(run.hold())
            except RunLockedError:
                if not wait_if_locked:
                    raise
                _wait_for(run)
                return run
        _train_in_run(run, setup, force, show_progress, main)
    _barrier()  # every process returns with the run finished
    return run


def _train_in_run(run: ReportingRun, setup: Setup, force: bool, show_progress: bool, main: bool) -> None:
    model_cfg, data, adapter, training = setup.model, setup.data, setup.adapter, setup.training
    assert adapter.layers is not None, "the setup's adapter has its layers resolved"
    if force and main:
        import shutil
        shutil.rmtree(run.file("checkpoint"), ignore_errors=True)
    model, tok = load_model(model_cfg.model, _process_device(model_cfg),
                            trust_remote_code=model_cfg.trust_remote_code, device_map=model_cfg.device_map)
    split = load_split(data)
    rows = tokenize(tok, split.train, data.max_length)
    val = tokenize(tok, split.val, data.max_length) if split.val else []
    if len(rows) < training.batch_size:
        raise ValueError(f"the sample has {len(rows)} examples, fewer than the batch size "
                         f"{training.batch_size}: raise max_samples/ratio or lower batch_size")
    torch.manual_seed(training.seed)  # adapter initialisation
    apply_hydralora(model, adapter)
    device = next(model.parameters()).device
    if main:
        run.log(event="stage", stage="train", message=f"layers {adapter.layers}: {len(rows)} "
                f"training examples, {trainable_parameters(model):,} trainable parameters")
    before_key = _loss_before_key(model_cfg, data, device)
    val_before = loss_before_training(model, val, tok.pad_token_id, before_key) if val and main else None
    run.validate = _validator(model, val, tok.pad_token_id)
    with PeakMemory(device) as memory:
        summary = train(model, rows, training, tok.pad_token_id, run=run,
                        show_progress=show_progress, stage="train")
    if not main:
        return
    val_after = validation_loss(model, val, tok.pad_token_id) if val else None
    save_adapter(model, adapter, run.file(ADAPTER_DIR))
    payload: TrainJson = {**summary, "layers": adapter.layers, "r": adapter.r,
                             "val_loss_before": val_before, "val_loss_after": val_after,
                             "n_train": len(rows), "n_val": len(val),
                             "trainable_parameters": trainable_parameters(model),
                             "peak_memory_bytes": memory.peak_bytes,
                             "peak_memory_source": memory.source, "device": str(device)}
    run.write_json(SUMMARY, payload)
    run.finish([SUMMARY, f"{ADAPTER_DIR}/adapter_model.safetensors"])


def load_trained(run: Run, device: str = "auto", trust_remote_code: bool = False):
    """The base model with the trained sparse adapter attached, and its tokenizer."""
    from floe.pipeline.warmup import load_warmed_up  # same layout: the run's adapter/ on its model
    return load_warmed_up(run, device, trust_remote_code)


def summary_of(run: Run) -> TrainJson:
    return read_json(run.file(SUMMARY))
