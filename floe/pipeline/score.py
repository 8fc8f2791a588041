"""FLoE scoring of a warmed-up model: Taylor costs, mask Fisher, greedy search, swap
refinement, least-squares tuning, layer importance and baselines (METHOD 3-8).

``run_score`` caches one scoring per (warm-up, ScoreConfig) in a run of kind ``score``
(floe.experiments.study chains warm-up and scoring, and repeats both over data ratios).
The files written are described in docs/artifacts.md; ``LayersJson`` is layers.json.
"""
from __future__ import annotations

import platform
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from floe import KEY_VERSIONS
from floe.method.baselines import adapter_output_norms, adapter_update_norms, ht_sr_alphas, weight_norms
from floe.method.fisher import mask_fisher
from floe.method.importance import (
    all_layers,
    layer_components,
    norm_ranking,
    random_ranking,
    rank_layers,
    unit_weight_counts,
)
from floe.method.refine import RefineResult, refine_masks
from floe.method.search import greedy_masks
from floe.method.taylor import average_costs, taylor_costs
from floe.method.tune import tune_mask_sets
from floe.models import arch
from floe.pipeline.data import batches as make_batches
from floe.pipeline.data import data_config, load_split, tokenize
from floe.pipeline.warmup import load_warmed_up
from floe.store import artifacts
from floe.store.artifacts import LayersJson, Refinement
from floe.store.config import option, to_dict
from floe.store.runs import Run, atomic_save_tensors, open_run, reuse_finished, run_for

__all__ = ["ScoreConfig", "baseline_signals", "compute_scores", "load_layers", "load_units", "open_score_run",
           "refinement_summary", "run_score", "summary"]

UNITS, LAYERS, TIMINGS = "units.safetensors", artifacts.LAYERS, artifacts.TIMINGS


@dataclass
class ScoreConfig:
    """FLoE scoring settings."""

    beta: float = option(0.5, "budget: share of the model's total Taylor cost the retained "
                         "units may keep, in (0, 1]")
    score_samples: int = option(32, "examples of the warm-up sample used for scoring "
                                "(Taylor, Fisher, tuning); capped at the sample size")
    score_batch_size: int = option(8, "sequences per scoring batch")
    damping: float = option(1e-2, "ridge damping of the mask tuning, relative to the mean "
                            "diagonal of the normal equations")
    bound: float = option(10.0, "tuned mask values outside [-bound, bound] fall back to the "
                          "binary mask")
    taylor_chunks: str = option("1", "Taylor passes over the scoring data, each gathering the "
                                "gradients of L/N layers (about 1/N of the fp32 buffers; same "
                                "costs); 'auto': the fewest that fit the device")
    fill: bool = option(False, "extension: after the refinement's swaps, add back masked units "
                        "by decreasing tau/cost while they fit the leftover budget")

    def __post_init__(self):
        if not 0 < self.beta <= 1:
            raise ValueError(f"budget beta must be in (0, 1], got {self.beta}")
        if self.score_samples < 1 or self.score_batch_size < 1:
            raise ValueError("score_samples and score_batch_size must be >= 1")
        if self.taylor_chunks != "auto" and not (str(self.taylor_chunks).isdigit() and int(self.taylor_chunks) >= 1):
            raise ValueError(f"taylor_chunks must be a number >= 1 or 'auto', got {self.taylor_chunks!r}")
        if not (self.damping >= 0 and self.bound > 0):  # also refuses nan
            raise ValueError(f"need damping >= 0 and bound > 0, got {self.damping} and {self.bound}")


# --------------------------------------------------------------------------- layers.json

# --------------------------------------------------------------------------- progress
class _Stages:
    """Times each stage, logs it to the run and shows a progress bar."""

    def __init__(self, run: Run, show: bool):
        self.run, self.show = run, show
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, total: int | None = None):
        self.run.log(event="stage", stage=name, message=f"{name} started")
        bar = tqdm(total=total, desc=name, disable=not self.show, dynamic_ncols=True)

        def progress(done: int, total_: int | None = None):
            bar.total = total_ or bar.total
            bar.n = done
            bar.refresh()
            self.run.log(event="progress", stage=name, done=done, total=total_ or total)

        start = time.perf_counter()
        try:
            yield progress
        finally:
            bar.close()
            self.seconds[name] = time.perf_counter() - start


# --------------------------------------------------------------------------- pipeline
def score_key(warmup: Run, config: ScoreConfig) -> dict:
    # taylor_chunks changes memory, not results: runs with any value share a key.
    return {"floe": KEY_VERSIONS["score"], "warmup": warmup.config, "warmup_run": warmup.id,
            "score": {k: v for k, v in to_dict(config).items() if k != "taylor_chunks"}}


def scoring_batches(warmup: Run, tokenizer, config: ScoreConfig) -> list[dict]:
    """The first ``score_samples`` examples of the warm-up's own sample, length-sorted so
    batches carry little padding (sums over samples do not depend on the order)."""
    cfg = warmup.config
    data = data_config(cfg["data"])
    rows = tokenize(tokenizer, load_split(data).train[:config.score_samples], data.max_length)
    if len(rows) < min(config.score_batch_size, config.score_samples):
        raise ValueError(f"the sample has {len(rows)} usable examples, fewer than the scoring "
                         f"batch size {config.score_batch_size}")
    rows.sort(key=lambda r: len(r["input_ids"]))
    return list(make_batches(rows, config.score_batch_size, tokenizer.pad_token_id))


def _masks_to_scores(tuned, keep_h, keep_n, shape):
    n_head, n_neuron = unit_weight_counts(shape.hidden, shape.head_dim, shape.group)
    comps = layer_components(tuned.head_values, tuned.neuron_values, n_head, n_neuron)
    binary = layer_components(keep_h.float(), keep_n.float(), n_head, n_neuron)
    return comps, binary


def taylor_chunk_count(model, config: ScoreConfig, batches: list[dict]) -> int:
    """``config.taylor_chunks``, or for 'auto' the fewest passes whose planned peak fits the
    device's free memory now (the weights, already loaded, counted back in)."""
    if config.taylor_chunks != "auto":
        return int(config.taylor_chunks)
    from floe.models import memory
    param = next(model.parameters())
    dims = memory.dims_of(model.config)
    budget = memory.HEADROOM * memory.free_memory_bytes(param.device) + dims.parameters * param.element_size()
    tokens = max(b["input_ids"].numel() for b in batches)
    chunks = memory.taylor_chunks_for(dims, tokens, param.element_size(), budget)
    if chunks is None:
        raise ValueError(f"Taylor scoring does not fit in {budget / memory.GIB:.1f} GiB even one layer "
                         "per pass: lower --score-batch-size")
    return chunks
def _masked_sum(values, keep) -> float:
    return float(sum(torch.where(k, 0.0, v.double()).sum() for v, k in zip(values, keep)))


def _kept_sum(values, keep) -> float:
    return float(sum(torch.where(k, v.double(), 0.0).sum() for v, k in zip(values, keep)))


def refinement_summary(refined, tau, cost, greedy, budget: float, fill: bool) -> Refinement:
    """What refinement did: the greedy masks' loss and cost against C, the loss after
    drop-to-fit and at the end (layers.json "refinement", docs/artifacts.md)."""
    history = refined.loss_history
    final = (refined.keep_heads, refined.keep_neurons)
    ratio = (lambda keep: _kept_sum(cost, keep) / budget) if budget > 0 else (lambda keep: 0.0)
    return {"swaps": refined.n_swaps, "dropped_to_fit": refined.n_dropped_to_fit, "fill": fill,
            "filled": refined.n_filled, "greedy_loss": _masked_sum(tau, greedy),
            "greedy_cost_ratio": ratio(greedy), "fit_loss": history[0] if history else None,
            "refined_loss": history[-1] if history else None, "refined_cost_ratio": ratio(final)}


def baseline_signals(model, batches: list[dict], roles) -> dict[str, torch.Tensor]:
    """Per-layer values of the norm-like baselines (larger: adapt first)."""
    return {"weight_norm": weight_norms(model, roles),
            "adapter_norm": adapter_update_norms(model, roles),
            "lora_drop": adapter_output_norms(model, batches, roles),
            "ht_sr": ht_sr_alphas(model)}


@dataclass
class _Measured:
    """What the stages measured on one adapted model (CPU tensors)."""

    cost: tuple[Tensor, Tensor]           # per-unit Taylor costs (heads, neurons)
    tau: tuple[Tensor, Tensor]            # per-unit mask Fisher
    greedy: tuple[Tensor, Tensor]         # Algorithm 1's masks
    refined: RefineResult                 # Algorithm 2's
    budget: float
    tuned: dict[str, Any]                 # "refined", "greedy": least-squares tuned masks
    signals: dict[str, Tensor]            # the baselines' per-layer values


def _run_stages(model, batches: list[dict], config: ScoreConfig, stages: _Stages, roles) -> _Measured:
    """Taylor costs, mask Fisher, greedy search, refinement, tuning and baselines, in order."""
    chunks = taylor_chunk_count(model, config, batches)
    with stages.stage("taylor", len(batches) * chunks) as progress:
        cost_h, cost_n = taylor_costs(model, batches, progress, chunks=chunks)
    with stages.stage("fisher", len(batches)) as progress:
        tau_h, tau_n = mask_fisher(model, batches, progress)
    cost_h, cost_n, tau_h, tau_n = (t.float().cpu() for t in (cost_h, cost_n, tau_h, tau_n))
    t_h, t_f = average_costs(cost_h, cost_n)
    with stages.stage("search"):
        greedy_h, greedy_n = greedy_masks(tau_h, tau_n, t_h, t_f, config.beta)
    with stages.stage("refine"):
        budget = float(config.beta * (cost_h.double().sum() + cost_n.double().sum()))
        refined = refine_masks(tau_h, tau_n, cost_h, cost_n, greedy_h, greedy_n, budget,
                               fill=config.fill)
    with stages.stage("tune", arch.shape_of(model.config).n_layers) as progress:  # both mask sets
        tuned = dict(zip(("refined", "greedy"), tune_mask_sets(
            model, batches, [(refined.keep_heads, refined.keep_neurons), (greedy_h, greedy_n)],
            damping=config.damping, bound=config.bound, progress=progress)))
    with stages.stage("baselines"):
        signals = baseline_signals(model, batches, roles)
    return _Measured((cost_h, cost_n), (tau_h, tau_n), (greedy_h, greedy_n), refined, budget, tuned, signals)


def _unit_tensors(m: _Measured) -> dict[str, Tensor]:
    """units.safetensors: every unit's scores, costs and masks."""
    refined, tuned = m.refined, m.tuned["refined"]
    return {"tau_heads": m.tau[0], "tau_neurons": m.tau[1], "cost_heads": m.cost[0], "cost_neurons": m.cost[1],
            "greedy_heads": m.greedy[0].float(), "greedy_neurons": m.greedy[1].float(),
            "refined_heads": refined.keep_heads.float(), "refined_neurons": refined.keep_neurons.float(),
            "tuned_heads": tuned.head_values.float().cpu(), "tuned_neurons": tuned.neuron_values.float().cpu()}


def _layers_payload(m: _Measured, shape: arch.Shape, config: ScoreConfig, seed: int) -> dict:
    """layers.json's scores, rankings and summaries (run_score adds model, data, ratio)."""
    refined = m.refined
    scores, binary = _masks_to_scores(m.tuned["refined"], refined.keep_heads, refined.keep_neurons, shape)
    scores_nr, _ = _masks_to_scores(m.tuned["greedy"], *m.greedy, shape)
    as_list = lambda t: [float(x) for x in t]  # noqa: E731
    tuned = m.tuned["refined"]
    return {
        "n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_neurons": shape.intermediate,
        "beta": config.beta, "seed": seed,
        "layer_scores": as_list(scores["score"]), "ranking": rank_layers(scores["score"]),
        "layer_scores_without_refinement": as_list(scores_nr["score"]),
        "ranking_without_refinement": rank_layers(scores_nr["score"]),
        "components": {
            "head_share": as_list(scores["head_share"]), "neuron_share": as_list(scores["neuron_share"]),
            "binary_share": as_list(binary["retained_share"]),
            "fisher_heads": as_list(m.tau[0].sum(1)), "fisher_neurons": as_list(m.tau[1].sum(1)),
            "taylor_heads": as_list(m.cost[0].sum(1)), "taylor_neurons": as_list(m.cost[1].sum(1)),
            "retained_heads": [int(x) for x in refined.keep_heads.sum(1)],
            "retained_neurons": [int(x) for x in refined.keep_neurons.sum(1)]},
        "baselines": {"random": random_ranking(shape.n_layers, seed),
                      **{name: norm_ranking(values) for name, values in m.signals.items()},
                      "all": all_layers(shape.n_layers)},
        "signals": {name: as_list(values) for name, values in m.signals.items()},
        "refinement": refinement_summary(refined, m.tau, m.cost, m.greedy, m.budget, config.fill),
        "tuning": {"fallbacks": int(tuned.fallback.sum()), "error_binary": float(tuned.error_binary.sum()),
                   "error_tuned": float(tuned.error_tuned.sum())},
    }


def compute_scores(model, batches: list[dict], config: ScoreConfig, stages: _Stages,
                   seed: int, roles) -> tuple[dict, dict]:
    """All FLoE stages on one adapted model. Returns (unit tensors, layers.json payload)."""
    measured = _run_stages(model, batches, config, stages, roles)
    return _unit_tensors(measured), _layers_payload(measured, arch.shape_of(model.config), config, seed)


def _environment(model) -> dict:
    import transformers
    return {"device": str(next(model.parameters()).device), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "host": socket.gethostname(), "threads": torch.get_num_threads()}


def run_score(warmup: Run, config: ScoreConfig, device: str = "auto", force: bool = False,
              show_progress: bool = True, trust_remote_code: bool = False,
              device_map: str | None = None) -> Run:
    """Score a finished warm-up (or reuse the finished scoring of the same config)."""
    warmup.verify()
    run = run_for("score", score_key(warmup, config))
    if reuse_finished(run, force):
        return run
    with run.hold():
        start = time.perf_counter()
        model, tok = load_warmed_up(warmup, device, trust_remote_code=trust_remote_code,
                                    device_map=device_map)
        batches = scoring_batches(warmup, tok, config)
        stages = _Stages(run, show_progress)
        cfg = warmup.config
        units, layers = compute_scores(model, batches, config, stages, cfg["data"]["seed"],
                                       cfg["adapter"]["targets"])
        layers.update(model=cfg["model"]["model"], data=cfg["data"]["data"],
                      ratio=cfg["data"]["ratio"], n_scoring_samples=sum(len(b["input_ids"]) for b in batches))
        atomic_save_tensors(run.file(UNITS), units)
        run.write_json(LAYERS, layers)
        run.write_json(TIMINGS, {**stages.seconds, "total": time.perf_counter() - start,
                                 **_environment(model)})
        run.finish([UNITS, LAYERS, TIMINGS])
    return run


# --------------------------------------------------------------------------- readers
def load_layers(run: Run) -> LayersJson:
    """layers.json of a finished, intact score run."""
    run.verify()
    return run.read_json(LAYERS)


def load_units(run: Run) -> dict[str, torch.Tensor]:
    run.verify()
    return load_file(str(run.file(UNITS)))


def summary(run: Run) -> dict:
    """The machine-readable summary ``floe score/analyze --json`` prints."""
    layers = load_layers(run)
    return {"run": run.id, "path": str(run.path), "model": layers["model"],
            "data": layers["data"], "ratio": layers["ratio"], "beta": layers["beta"],
            "layer_scores": layers["layer_scores"], "ranking": layers["ranking"],
            "ranking_without_refinement": layers["ranking_without_refinement"],
            "baselines": layers["baselines"], "timings": run.read_json(TIMINGS)}


def open_score_run(run_id: str) -> Run:
    run = open_run(run_id)
    if run.kind != "score":
        raise ValueError(f"run {run_id} is a {run.kind} run, not a score run")
    return run
