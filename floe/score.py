"""FLoE scoring of a warmed-up model: Taylor costs, mask Fisher, greedy search, swap
refinement, least-squares tuning, layer importance and baselines (METHOD 3-8).

``run_score`` caches one scoring per (warm-up, ScoreConfig) in a run of kind ``score``;
``run_analysis`` chains warm-up and scoring, and ``run_study`` repeats both over data
ratios for the stability view. The files written are described in docs/artifacts.md.
"""
from __future__ import annotations

import dataclasses
import platform
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from . import __version__, arch
from .config import option, to_dict
from .data import DataConfig, batches as make_batches, load_split, tokenize
from .fisher import mask_fisher
from .hydralora import HydraLoraConfig, HydraLoraLinear
from .importance import (all_layers, layer_components, norm_ranking, random_ranking,
                         rank_layers, unit_weight_counts)
from .refine import refine_masks
from .runs import DONE, Run, atomic_save_tensors, open_run, run_for
from .search import budget_of, greedy_masks
from .taylor import average_costs, taylor_costs
from .train import TrainConfig
from .tune import tune_mask_sets
from .warmup import ModelConfig, load_warmed_up, run_warmup

UNITS, LAYERS, TIMINGS = "units.safetensors", "layers.json", "timings.json"
POLICIES = ("floe", "floe-no-refine", "random", "weight-norm", "adapter-norm", "all")


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

    def __post_init__(self):
        if not 0 < self.beta <= 1:
            raise ValueError(f"budget beta must be in (0, 1], got {self.beta}")
        if self.score_samples < 1 or self.score_batch_size < 1:
            raise ValueError("score_samples and score_batch_size must be >= 1")


# --------------------------------------------------------------------------- progress
class _Stages:
    """Times each stage, logs it to the run and shows a progress bar."""

    def __init__(self, run: Run, show: bool):
        self.run, self.show, self.seconds = run, show, {}

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


# --------------------------------------------------------------------------- baselines
def _layer_norm(model, k: int, roles, weight_of) -> float:
    return float(sum(weight_of(arch.projection(model, k, r)).double().square().sum()
                     for r in roles) ** 0.5)


def weight_norms(model, roles) -> torch.Tensor:
    """Per-layer L2 norm of the pretrained target weights (the paper's weight-norm baseline)."""
    n = arch.shape_of(model.config).n_layers
    return torch.tensor([_layer_norm(model, k, roles, lambda m: m.weight) for k in range(n)])


def adapter_update_norms(model, roles) -> torch.Tensor:
    """Per-layer L2 norm of the warm-up update, sqrt(sum over targets and experts ||dW_i||^2)."""
    n = arch.shape_of(model.config).n_layers

    def update(m):
        return m.expert_updates() if isinstance(m, HydraLoraLinear) else torch.zeros(1)
    with torch.no_grad():
        return torch.tensor([_layer_norm(model, k, roles, update) for k in range(n)])


# --------------------------------------------------------------------------- pipeline
def score_key(warmup: Run, config: ScoreConfig) -> dict:
    return {"floe": __version__, "warmup": warmup.config, "warmup_run": warmup.id,
            "score": to_dict(config)}


def scoring_batches(warmup: Run, tokenizer, config: ScoreConfig) -> list[dict]:
    """The first ``score_samples`` examples of the warm-up's own sample, length-sorted so
    batches carry little padding (sums over samples do not depend on the order)."""
    cfg = warmup.config
    data = DataConfig(**cfg["data"])
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


def compute_scores(model, batches: list[dict], config: ScoreConfig, stages: _Stages,
                   seed: int, roles) -> tuple[dict, dict]:
    """All FLoE stages on one adapted model. Returns (unit tensors, layers.json payload)."""
    shape = arch.shape_of(model.config)
    with stages.stage("taylor", len(batches)) as progress:
        cost_h, cost_n = taylor_costs(model, batches, progress)
    with stages.stage("fisher", len(batches)) as progress:
        tau_h, tau_n = mask_fisher(model, batches, progress)
    cost_h, cost_n, tau_h, tau_n = (t.float().cpu() for t in (cost_h, cost_n, tau_h, tau_n))
    t_h, t_f = average_costs(cost_h, cost_n)
    with stages.stage("search"):
        greedy_h, greedy_n = greedy_masks(tau_h, tau_n, t_h, t_f, config.beta)
    with stages.stage("refine"):
        budget = float(config.beta * (cost_h.double().sum() + cost_n.double().sum()))
        refined = refine_masks(tau_h, tau_n, cost_h, cost_n, greedy_h, greedy_n, budget)
    with stages.stage("tune", shape.n_layers) as progress:  # refined and greedy together
        tuned = dict(zip(("refined", "greedy"), tune_mask_sets(
            model, batches, [(refined.keep_heads, refined.keep_neurons), (greedy_h, greedy_n)],
            damping=config.damping, bound=config.bound, progress=progress)))
    scores, binary = _masks_to_scores(tuned["refined"], refined.keep_heads, refined.keep_neurons, shape)
    scores_nr, _ = _masks_to_scores(tuned["greedy"], greedy_h, greedy_n, shape)
    units = {"tau_heads": tau_h, "tau_neurons": tau_n, "cost_heads": cost_h,
             "cost_neurons": cost_n, "greedy_heads": greedy_h.float(),
             "greedy_neurons": greedy_n.float(), "refined_heads": refined.keep_heads.float(),
             "refined_neurons": refined.keep_neurons.float(),
             "tuned_heads": tuned["refined"].head_values.float().cpu(),
             "tuned_neurons": tuned["refined"].neuron_values.float().cpu()}
    as_list = lambda t: [float(x) for x in t]  # noqa: E731
    layers = {
        "n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_neurons": shape.intermediate,
        "beta": config.beta, "seed": seed,
        "layer_scores": as_list(scores["score"]), "ranking": rank_layers(scores["score"]),
        "layer_scores_without_refinement": as_list(scores_nr["score"]),
        "ranking_without_refinement": rank_layers(scores_nr["score"]),
        "components": {
            "head_share": as_list(scores["head_share"]), "neuron_share": as_list(scores["neuron_share"]),
            "binary_share": as_list(binary["score"]),
            "fisher_heads": as_list(tau_h.sum(1)), "fisher_neurons": as_list(tau_n.sum(1)),
            "taylor_heads": as_list(cost_h.sum(1)), "taylor_neurons": as_list(cost_n.sum(1)),
            "retained_heads": [int(x) for x in refined.keep_heads.sum(1)],
            "retained_neurons": [int(x) for x in refined.keep_neurons.sum(1)]},
        "baselines": {"random": random_ranking(shape.n_layers, seed),
                      "weight_norm": norm_ranking(weight_norms(model, roles)),
                      "adapter_norm": norm_ranking(adapter_update_norms(model, roles)),
                      "all": all_layers(shape.n_layers)},
        "refinement": {"swaps": refined.n_swaps, "dropped_to_fit": refined.n_dropped_to_fit,
                       "greedy_loss": refined.loss_history[0] if refined.loss_history else None,
                       "refined_loss": refined.loss_history[-1] if refined.loss_history else None},
        "tuning": {"fallbacks": int(tuned["refined"].fallback.sum()),
                   "error_binary": float(tuned["refined"].error_binary.sum()),
                   "error_tuned": float(tuned["refined"].error_tuned.sum())},
    }
    return units, layers


def _environment(model) -> dict:
    import transformers
    return {"device": str(next(model.parameters()).device), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "host": socket.gethostname(), "threads": torch.get_num_threads()}


def run_score(warmup: Run, config: ScoreConfig, device: str = "auto", force: bool = False,
              show_progress: bool = True, trust_remote_code: bool = False) -> Run:
    """Score a finished warm-up (or reuse the finished scoring of the same config)."""
    warmup.verify()
    run = run_for("score", score_key(warmup, config))
    if run.status == DONE and not force:
        run.verify()
        return run
    with run.hold():
        start = time.perf_counter()
        model, tok = load_warmed_up(warmup, device, trust_remote_code=trust_remote_code)
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
def load_layers(run: Run) -> dict:
    """layers.json of a finished, intact score run."""
    run.verify()
    return run.read_json(LAYERS)


def load_units(run: Run) -> dict[str, torch.Tensor]:
    run.verify()
    return load_file(str(run.file(UNITS)))


def ranking_for(run: Run, policy: str) -> list[int]:
    """The layer ranking of ``policy`` (most important first) from a score run."""
    layers = load_layers(run)
    if policy == "floe":
        return layers["ranking"]
    if policy == "floe-no-refine":
        return layers["ranking_without_refinement"]
    key = policy.replace("-", "_")
    if key not in layers["baselines"]:
        raise ValueError(f"unknown policy {policy!r}; choose among {', '.join(POLICIES)}")
    return layers["baselines"][key]


# --------------------------------------------------------------------------- analyses
def run_analysis(model: ModelConfig, data: DataConfig, adapter: HydraLoraConfig,
                 training: TrainConfig, score: ScoreConfig, force: bool = False,
                 show_progress: bool = True) -> Run:
    """Warm-up + scoring, each reused when already done."""
    warm = run_warmup(model, data, adapter, training, force=force, show_progress=show_progress)
    return run_score(warm, score, model.device, force=force, show_progress=show_progress,
                     trust_remote_code=model.trust_remote_code)


def ranks_of(ranking: list[int]) -> list[int]:
    """rank (1 = most important) of each layer, from a ranking (layer indices in order)."""
    ranks = [0] * len(ranking)
    for position, layer in enumerate(ranking, 1):
        ranks[layer] = position
    return ranks


def run_study(model: ModelConfig, data: DataConfig, adapter: HydraLoraConfig,
              training: TrainConfig, score: ScoreConfig, ratios: list[float],
              force: bool = False, show_progress: bool = True) -> Run:
    """The data-ratio stability study: one warm-up and scoring per ratio, same seed."""
    if not ratios:
        raise ValueError("--ratios needs at least one ratio")
    for r in ratios:
        if not 0 < r <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {r}")
    key = {"floe": __version__, "model": to_dict(model), "data": to_dict(data),
           "adapter": to_dict(adapter), "train": to_dict(training), "score": to_dict(score),
           "ratios": sorted(ratios, reverse=True)}
    key["model"].pop("device")
    study = run_for("study", key)
    if study.status == DONE and not force:
        study.verify()
        return study
    with study.hold():
        runs = {}
        for r in key["ratios"]:
            study.log(event="stage", stage=f"ratio {r}", message=f"warm-up and scoring at ratio {r}")
            runs[str(r)] = run_analysis(model, dataclasses.replace(data, ratio=r), adapter,
                                        training, score, force, show_progress)
        layers = {r: load_layers(run) for r, run in runs.items()}
        study.write_json("stability.json", {
            "ratios": key["ratios"], "score_runs": {r: run.id for r, run in runs.items()},
            "ranks": {r: ranks_of(l["ranking"]) for r, l in layers.items()},
            "ranks_without_refinement": {r: ranks_of(l["ranking_without_refinement"])
                                         for r, l in layers.items()}})
        study.finish(["stability.json"])
    return study


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
