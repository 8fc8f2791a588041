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
passes and no other training. The same switch reads any SET of layers, so with
``SetSearchConfig.set_search`` (``--set-search``; off by default: about L^2 validation
passes per seed) the joint probe then searches the sets themselves (``search_sets``,
floe.method.setsearch): forward selection and backward elimination over the probed
layers, and the predicted validation loss of every ranking's top-k at every k (the
curves), with the smallest k within a tolerance of the all-layer gain (``suggestion``).
With several seeds each seed's trained adapter stays in memory and a set's loss is the
mean over seeds, so the searches rank sets by the same averaged measurement the singles
are ranked by.

The result is a probe run (kind ``probe``, keyed with its schedule) whose probe.json has
the usual fields plus ``ranking``: what policy ``probe`` reads, and for a joint probe
``set_search`` (with the search): what policy ``probe-set`` reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from floe.adapters.hydralora import (
    HydraLoraConfig,
    adapter_state_dict,
    apply_hydralora,
    remove_hydralora,
)
from floe.experiments.probe import SUMMARY, ProbeConfig, layer_gains, probe_key, probe_run, summary_head
from floe.experiments.switched import SwitchedLoss, only_layers_on
from floe.method.halving import halving_cost, halving_schedule, successive_halving
from floe.method.setsearch import (
    MemoLoss,
    backward_elimination,
    better_search,
    completed_order,
    curve_of_ranking,
    forward_selection,
    suggested_k,
)
from floe.models import arch
from floe.models.load import load_model, resolve_device
from floe.pipeline.data import load_split, tokenize
from floe.pipeline.setup import Setup
from floe.pipeline.train import TrainConfig, total_steps, train, validation_loss
from floe.store.artifacts import ProbeCell, ProbeHead, ProbeJson, SetSearch, Suggestion
from floe.store.config import option, to_dict
from floe.store.runs import DONE, Run, reuse_finished, run_for

__all__ = ["Bench", "JointLosses", "SetSearchConfig", "cheap_probe_run", "joint_adapters", "layer_adapter",
           "measure_halving", "measure_joint", "only_layers_on", "run_cheap_probe", "search_cost", "search_sets",
           "set_search_summary", "suggestion", "train_joint", "train_layers"]

# The rankings every joint probe draws a curve for, besides those a caller adds (a score
# run's floe and adapter-norm): its singles ranking, the two searches' orders, depth.
OWN_CURVES = ("probe", "forward", "backward", "deepest")


@dataclass
class SetSearchConfig:
    """The joint probe's set search: the best set of each size, read from its trained adapter."""

    set_search: bool = option(False, "joint: after training, also search the best set of layers of each "
                              "size (forward selection and backward elimination, read by switching the "
                              "trained adapters; no training) and predict every ranking's validation loss "
                              "at each k: what policy probe-set and the app's loss-per-k curve read. Off by "
                              "default for its cost: about L^2 validation passes per seed for L probed "
                              "layers (the joint probe itself: L + 1), less the decoder blocks replayed from "
                              "each set's parent; for SmolLM2's 30 layers 28 min on a 2-core CPU "
                              "(docs/results.md), against 81 s for the probe")
    search_max_k: int | None = option(None, "joint with --set-search: the largest set forward selection "
                                      "grows (default: every probed layer, so its order covers every k); "
                                      "k x L validation passes "
                                      "per seed up to k; backward elimination costs L^2 / 2 whatever it is")
    tolerance: float = option(0.9, "suggested k: the smallest k whose predicted gain reaches this share of "
                              "the all-layer gain (read from the stored curve: not part of the probe's key)")

    def __post_init__(self):
        if self.search_max_k is not None and self.search_max_k < 1:
            raise ValueError(f"search_max_k must be >= 1, got {self.search_max_k}")
        if not 0 < self.tolerance <= 1:
            raise ValueError(f"tolerance must be in (0, 1], got {self.tolerance}")


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


def train_joint(bench: Bench, setup: Setup, seeds: list[int], n_layers: int,
                show_progress: bool = False) -> tuple[dict[int, dict], float]:
    """Each seed's all-layer adapter, trained at the full budget and kept in memory (its
    tensors by name), and the seconds the trainings took together."""
    states: dict[int, dict[str, torch.Tensor]] = {}
    seconds = 0.0
    for s in seeds:
        with layer_adapter(bench.model, setup.adapter, list(range(n_layers)), s):
            start = time.perf_counter()
            train(bench.model, bench.rows, dataclasses.replace(setup.training, seed=s), bench.pad_id,
                  show_progress=show_progress, stage=f"joint adapter, seed {s}")
            seconds += time.perf_counter() - start
            states[s] = {name: t.clone() for name, t in adapter_state_dict(bench.model).items()}
    return states, seconds


class JointLosses:
    """``losses(layers, parent=None)``: per seed, the validation loss with that seed's
    trained weights and only the adapters of ``layers`` on (one validation pass per seed,
    or less: the blocks below the layer where ``layers`` and ``parent`` differ are replayed
    from the parent's pass, floe.experiments.switched). The loaded seed is read first, so
    one seed loads its weights once. ``switched`` counts the blocks run and replayed."""

    def __init__(self, model, states: Mapping[int, dict[str, torch.Tensor]], switched: SwitchedLoss):
        self.states, self.switched = states, switched
        self._params = dict(model.named_parameters())
        self._loaded: int | None = None

    def _load(self, seed: int) -> None:
        if self._loaded != seed:
            with torch.no_grad():
                for name, value in self.states[seed].items():
                    self._params[name].copy_(value)
            self._loaded = seed

    def __call__(self, layers: frozenset[int], parent: frozenset[int] | None = None) -> dict[int, float]:
        out = {}
        for seed in sorted(self.states, key=lambda s: s != self._loaded):
            self._load(seed)
            out[seed] = self.switched(frozenset(layers), parent, key=seed)
        return {seed: out[seed] for seed in self.states}  # in seed order, whichever was loaded


@contextlib.contextmanager
def joint_adapters(bench: Bench, adapter: HydraLoraConfig, n_layers: int,
                   states: Mapping[int, dict[str, torch.Tensor]]) -> Iterator[JointLosses]:
    """The all-layer adapter on the model for the block, and its ``JointLosses``."""
    with layer_adapter(bench.model, adapter, list(range(n_layers)), seed=0):
        yield JointLosses(bench.model, states, SwitchedLoss(bench.model, bench.val, bench.pad_id))


def measure_joint(bench: Bench, setup: Setup, probe: ProbeConfig, layers: list[int], n_layers: int,
                  search: SetSearchConfig | None = None, rankings: Mapping[str, list[int]] | None = None,
                  on_set: Callable[[int, int], None] | None = None,
                  on_reading: Callable[[int, int], None] = lambda done, k: None, show_progress: bool = False) -> dict:
    """One all-layer adapter per seed; each layer's gain with only its adapter on; then,
    with ``search`` on, the set search and the curves of the probe's own rankings and of
    ``rankings`` (search_sets; one of another depth, another model's, is left out). Progress:
    ``on_reading(done, layer)``, ``on_set(done, at_most)``, and bars with ``show_progress``."""
    rankings = {name: r for name, r in (rankings or {}).items() if sorted(r) == list(range(n_layers))}
    states, train_seconds = train_joint(bench, setup, probe.seeds, n_layers, show_progress)
    with joint_adapters(bench, setup.adapter, n_layers, states) as losses:
        # Each single differs from the empty set (the base model) from its own block on, so
        # the blocks below it are replayed from one recorded pass of the empty set.
        singles = {}
        for k in tqdm(layers, desc="single-layer readings", disable=not show_progress, dynamic_ncols=True):
            singles[k] = losses(frozenset({k}), parent=frozenset())
            on_reading(len(singles), k)
        per_layer = {k: [bench.base_loss - singles[k][s] for s in probe.seeds] for k in layers}
        gains = {k: statistics.fmean(v) for k, v in per_layer.items()}
        steps = total_steps(len(bench.rows), setup.training)
        rung = {"steps": steps, "layers": layers, "gains": [gains[k] for k in layers], "kept": layers}
        ranking = sorted(layers, key=lambda k: (-gains[k], k))
        result: dict[str, Any] = {"ranking": ranking, "rungs": [rung], "per_seed": per_layer,
                                  "measured": {k: {steps: g} for k, g in gains.items()}}
        if search is not None and search.set_search:
            # Known for free: the empty set is the base model, the singles were just read.
            known = {frozenset(): bench.base_loss,
                     **{frozenset({k}): statistics.fmean(v.values()) for k, v in singles.items()}}
            counted = losses.switched
            run_before, replayed_before = counted.blocks_run, counted.blocks_replayed
            result["set_search"] = search_sets(lambda s, parent=None: statistics.fmean(losses(s, parent).values()),
                                               known, bench.base_loss, ranking, search, rankings,
                                               n_seeds=len(states), on_set=on_set)
            run, replayed = counted.blocks_run - run_before, counted.blocks_replayed - replayed_before
            result["set_search"].update(train_seconds=train_seconds, recording_passes=counted.recordings,
                                        blocks_replayed_share=replayed / max(run + replayed, 1))
    return result


def search_cost(n_layers: int, k_max: int | None = None, n_rankings: int = 0) -> int:
    """At most how many sets the search and curves evaluate beyond the singles and the
    empty set (fewer where the memo answers): forward's rounds 2..k_max, backward's sets
    of two or more layers (the all-layer set and each round's), and L per ranking whose
    curve is not a search's."""
    k_max = n_layers if k_max is None else min(k_max, n_layers)
    forward = sum(n_layers - i for i in range(1, k_max))
    backward = 1 + sum(range(3, n_layers + 1)) if n_layers > 1 else 0
    return forward + backward + n_rankings * n_layers


def search_sets(loss_of_set: Callable[..., float], known: Mapping[frozenset[int], float], base_loss: float,
                ranking: list[int], search: SetSearchConfig, rankings: Mapping[str, list[int]],
                n_seeds: int = 1, on_set: Callable[[int, int], None] | None = None) -> dict:
    """Forward selection and backward elimination over ``ranking``'s layers, which did
    better (lower mean loss over the sizes both reached), and the curve of every ranking
    at k = 1..L: the probe's singles ``ranking``, the searches' orders (forward's, when
    stopped at search_max_k, completed by backward's), the deepest layers, and
    ``rankings`` (restricted to the probed layers; one that lacks some, or takes a name
    of the probe's own, is left out). ``loss_of_set(layers, parent)`` is memoised
    (``known``: values already measured; ``parent``: the set it grows or shrinks, or
    None); the costs and the suggested k at ``search.tolerance`` go with it:
    probe.json's ``SetSearch`` less ``train_seconds`` and ``score_run``, the caller's."""
    layers = sorted(ranking)
    k_max = len(layers) if search.search_max_k is None else min(search.search_max_k, len(layers))
    others = {name: [k for k in r if k in set(layers)] for name, r in rankings.items()
              if name not in OWN_CURVES and set(layers) <= set(r)}
    at_most = search_cost(len(layers), k_max, len(others) + 2)
    loss = MemoLoss(loss_of_set, known, on_evaluation=(lambda done: on_set(done, at_most)) if on_set else None,
                    with_parent=True)
    start = time.perf_counter()
    forward = forward_selection(layers, loss, k_max=k_max)
    backward = backward_elimination(layers, loss)
    searched = time.perf_counter()
    better, means = better_search({"forward": forward, "backward": backward})
    drawn = {"probe": list(ranking), "forward": completed_order(forward["order"], backward["order"]),
             "backward": backward["order"], "deepest": layers[::-1], **others}
    ks = list(range(1, len(layers) + 1))
    curves = {name: curve_of_ranking(r, loss, ks) for name, r in drawn.items()}
    out = {"forward": forward, "backward": backward, "better": better, "mean_loss": means,
           "ranking": drawn[better], "ks": ks, "rankings": drawn, "curves": curves,
           "base_loss": base_loss, "all_loss": loss(layers), "search_max_k": k_max,
           "sets_evaluated": loss.evaluations, "validation_passes": loss.evaluations * n_seeds, "n_seeds": n_seeds,
           "search_seconds": searched - start, "curve_seconds": time.perf_counter() - searched}
    out["suggested"] = suggestion(out, search.tolerance)
    return out


def suggestion(found: Mapping[str, Any], tolerance: float = 0.9) -> Suggestion:
    """The suggested k on the better search's curve (policy probe-set's): the smallest k
    whose predicted gain reaches ``tolerance`` of the all-layer gain, and how it was got.
    ``found``: a probe.json ``set_search`` (a stored one is read again at any tolerance)."""
    name, base, all_loss = found["better"], found["base_loss"], found["all_loss"]
    all_gain = base - all_loss
    k = suggested_k(found["ks"], found["curves"][name], base, all_loss, tolerance)
    seeds = found.get("n_seeds", 1)
    source = (f"predicted by the joint adapter with only the set's adapters on (validation loss, "
              f"{'mean over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}), on the {name} search's sets")
    if k is None and all_gain <= 0:
        how = (f"no k suggested: adapting all {len(found['ks'])} layers does not lower the validation loss "
               f"({all_gain:+.4f} nats); {source}")
    elif k is None:
        how = f"no k reaches {tolerance:.0%} of the all-layer gain ({all_gain:.4f} nats); {source}"
    else:
        gain = base - found["curves"][name][found["ks"].index(k)]
        how = (f"k = {k} of {len(found['ks'])}: the smallest k whose gain ({gain:.4f} nats) reaches "
               f"{tolerance:.0%} of the all-layer gain ({all_gain:.4f}); {source}")
    return {"k": k, "tolerance": tolerance, "ranking": name, "all_gain": all_gain,
            "target_loss": base - tolerance * all_gain if all_gain > 0 else None, "how": how}


def set_search_summary(probe: ProbeJson, tolerance: float = 0.9) -> SetSearch | None:
    """A probe.json's set search with its suggested k read at ``tolerance`` (None: the
    probe has no set search): what ``floe probe --json`` shows and the app can draw, the
    curves under ``curves`` against ``ks``, ``base_loss`` and ``all_loss`` their frame."""
    found = probe.get("set_search")
    if not found:
        return None
    return {**found, "suggested": suggestion(found, tolerance)}


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


def cheap_probe_run(setup: Setup, probe: ProbeConfig, search: SetSearchConfig | None = None) -> Run:
    """The run of a cheap probe. The set search adds to a joint probe's run, not to its
    key: with or without it the probe trains and measures the same, so a joint probe keeps
    the key it had before the set search existed, ``--set-search`` on a finished probe
    measures it again adding the search, and a probe asked without the search reuses one
    that has it. Only the search's options that change what it finds (``search_max_k``)
    enter the key, and only with the search on and off their default; the tolerance
    never does (it only reads the stored curve)."""
    search = search or SetSearchConfig()
    default = SetSearchConfig()
    changed = {name: value for name, value in to_dict(search).items()
               if name not in ("set_search", "tolerance") and value != getattr(default, name)}
    if probe.schedule != "joint" or not search.set_search or not changed:
        return probe_run(setup, probe)
    return run_for("probe", {**probe_key(setup, probe), "set_search": changed})


def _lacks_set_search(run: Run, probe: ProbeConfig, search: SetSearchConfig) -> bool:
    """A finished joint probe of the same key from before the set search: measured again
    (its adapters were not kept) to add it."""
    if probe.schedule != "joint" or not search.set_search or run.status != DONE:
        return False
    return "set_search" not in run.read_json(SUMMARY)


def run_cheap_probe(setup: Setup, probe: ProbeConfig, force: bool = False, show_progress: bool = True,
                    search: SetSearchConfig | None = None, rankings: Mapping[str, list[int]] | None = None,
                    score_run: str | None = None) -> Run:
    """Measure the layers with one model load (schedule halving or joint); a probe run.
    A joint probe with ``search.set_search`` (default off: about L^2 validation passes per
    seed) also searches sets and draws the curves of its own rankings and of ``rankings``
    (from ``score_run``, recorded with them)."""
    if probe.schedule == "cells":
        raise ValueError("schedule cells trains each cell as its own run: use floe.experiments.probe.run_probe")
    search = search or SetSearchConfig()
    run = cheap_probe_run(setup, probe, search)
    if reuse_finished(run, force or _lacks_set_search(run, probe, search)):
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
        else:  # each reading and searched set logged with its total: the app draws a bar and an ETA
            log = functools.partial(run.log, event="progress")
            result = measure_joint(bench, setup, probe, layers, n_layers, search, rankings, show_progress=show_progress,
                                   on_reading=lambda done, k: log(stage="probe", done=done, total=len(layers), layer=k),
                                   on_set=lambda done, at_most: log(stage="set search", done=done, total=at_most))
            steps = total_steps(len(bench.rows), setup.training)
        found = result.get("set_search")
        if found is not None:
            found["score_run"] = score_run
        # The probe's own cost, as before the set search: that has its own seconds.
        searching = found["search_seconds"] + found["curve_seconds"] if found else 0.0
        result.update(train_steps=steps * len(probe.seeds), seconds=time.perf_counter() - start - searching)
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
    if "set_search" in result:
        payload["set_search"] = result["set_search"]
    run.write_json(SUMMARY, payload)

