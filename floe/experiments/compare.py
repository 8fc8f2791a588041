"""Policy comparison (the paper's Table 2): for each k, train the top-k layers of each
policy under the same budget, evaluate, repeat over seeds, report mean and a 95 %
t-interval per cell. Every training and evaluation is its own cached run, so a killed
comparison resumes at the first missing cell. With ``storage`` several workers, each with its
own cache, share the cells (the base model's evaluation and every (k, policy, seed) training)
through an Optuna study (floe.experiments.shared), and each writes compare.json from the
results the study records: the same file on every worker.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from floe import KEY_VERSIONS
from floe.eval.evaluate import SUMMARY as EVAL_SUMMARY
from floe.eval.evaluate import EvalConfig, headline, run_evaluation
from floe.experiments.shared import adapter_checksum, share_cells
from floe.method.stats import mean_ci
from floe.pipeline.data import DataConfig, data_key
from floe.pipeline.policies import MEASURED, POLICIES, open_probe_run
from floe.pipeline.score import open_score_run
from floe.pipeline.setup import ModelConfig, Setup
from floe.pipeline.sparse import SparseConfig, model_shape, run_sparse_training, sparse_run, summary_of
from floe.store import artifacts
from floe.store.artifacts import CompareCell, CompareJson
from floe.store.config import option, to_dict
from floe.store.runs import Run, atomic_write_bytes, reuse_finished, run_for
from floe.store.storage import open_storage, redact

__all__ = ["SUMMARY", "TABLE", "CompareConfig", "aggregate", "cell_selection", "compare_key", "format_table",
           "paired_differences", "plan", "reference_policy", "run_compare", "selection_overlap", "to_csv"]

SUMMARY, TABLE = artifacts.COMPARE, "compare.csv"


@dataclass
class CompareConfig:
    """The grid: layer counts x policies x seeds, all under one training budget."""

    ks: list[int] = option([4, 8], "numbers of adapted layers to compare")
    policies: list[str] = option(["floe", "random", "weight-norm"],
                                 f"layer selection policies, among {', '.join(POLICIES)}")
    seeds: list[int] = option([42, 43, 44], "training seeds (adapter init, data order, dropout)")
    include_all: bool = option(True, "also train every layer once per seed (the full-layer row)")
    resample_random: bool = option(True, "draw the random policy's layers anew for each seed, so "
                                   "its interval covers the choice of layers")
    confidence: float = option(0.95, "confidence level of the t-intervals")
    storage: str | None = option(None, "Optuna RDB storage URL (e.g. postgresql://...) through "
                                 "which several workers, each with its own cache, share this "
                                 "comparison's cells")
    study_name: str | None = option(None, "study name in the storage (default: the run id)")

    def __post_init__(self):
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise ValueError(f"unknown policy(ies) {bad or '(none)'}; choose among {', '.join(POLICIES)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of layer counts >= 1, got {self.ks}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


# --------------------------------------------------------------------------- the grid
def plan(config: CompareConfig, n_layers: int) -> list[tuple[int, str]]:
    """The (k, policy) cells; the full-layer row once, whatever the policies."""
    too_big = [k for k in config.ks if k > n_layers]
    if too_big:
        raise ValueError(f"k={too_big} larger than the model's {n_layers} layers")
    cells = [(k, p) for k in sorted(set(config.ks), reverse=True) for p in config.policies
             if p != "all"]
    if config.include_all or "all" in config.policies:
        cells.insert(0, (n_layers, "all"))
    return cells


def cell_selection(score_run: str, k: int, policy: str, seed: int,
                   config: CompareConfig, probe_run: str | None = None) -> SparseConfig:
    if policy == "random" and config.resample_random:
        return SparseConfig(score_run=score_run, policy="random", k=k, random_seed=seed)
    if policy in MEASURED:
        return SparseConfig(policy=policy, k=k, probe_run=probe_run)
    return SparseConfig(score_run=score_run, policy=policy, k=k)


def _rows(cells: dict[tuple[int, str, str], list[float]], confidence: float) -> list[CompareCell]:
    return [{"k": k, "policy": policy, "metric": metric, "values": values, **mean_ci(values, confidence)}
            for (k, policy, metric), values in cells.items()]


def aggregate(results: list[dict], confidence: float) -> list[CompareCell]:
    """One row per (k, policy, metric): the values over seeds, mean and interval."""
    cells: dict[tuple[int, str, str], list[float]] = {}
    for r in results:
        for metric, value in r["metrics"].items():
            cells.setdefault((r["k"], r["policy"], metric), []).append(value)
    return _rows(cells, confidence)


def paired_differences(results: list[dict], reference: str, confidence: float) -> list[CompareCell]:
    """Each policy minus ``reference`` at the same k and training seed, per metric: the mean
    paired difference and its t-interval. Both cells of a pair share the seed's data order
    and initialisation, so the pairing removes that noise from the comparison; an interval
    that excludes 0 is a difference the seeds support."""
    ref = {(r["k"], r["seed"]): r["metrics"] for r in results if r["policy"] == reference}
    cells: dict[tuple[int, str, str], list[float]] = {}
    for r in results:
        base = ref.get((r["k"], r["seed"]))
        if r["policy"] == reference or base is None:
            continue
        for metric, value in r["metrics"].items():
            if metric in base:
                cells.setdefault((r["k"], r["policy"], metric), []).append(value - base[metric])
    return _rows(cells, confidence)


def reference_policy(policies: list[str]) -> str | None:
    """What the differences are taken against: FLoE when compared, else the first policy."""
    named = [p for p in policies if p != "all"]
    return "floe" if "floe" in named else (named[0] if named else None)


def _significant(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant figures, without an exponent: 11.034 -> 11.03,
    0.012345 -> 0.01235, 1234.5 -> 1234 (differences between perplexities stay visible)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.{digits - 1}f}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def _fmt(metric: str) -> tuple[float, Callable[[float], str]]:
    """Accuracies in percent (as the paper's tables) with 2 decimals, losses with 4,
    perplexities with 4 significant figures."""
    if "acc" in metric:
        return 100.0, "{:.2f}".format
    return 1.0, _significant if metric == "perplexity" else "{:.4f}".format


def format_table(rows: list[CompareCell], metric: str, policies: list[str], title: str | None = None) -> str:
    """A Table-2-like text table of one metric: rows k (descending), columns policies."""
    scale, fmt = _fmt(metric)
    cells = {(r["k"], r["policy"]): r for r in rows if r["metric"] == metric}
    ks = sorted({k for k, _ in cells}, reverse=True)
    cols = [p for p in ["all"] + list(policies) if any((k, p) in cells for k in ks)]
    n = max((c["n"] for c in cells.values()), default=0)
    out = [f"{title or metric}{' (%)' if scale == 100 else ''}: mean ± 95% CI half-width over {n} seeds",
           "| layers | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for k in ks:
        line = []
        for p in cols:
            c = cells.get((k, p))
            if c is None:
                line.append("")
            elif c["half_width"] is None:
                line.append(fmt(c["mean"] * scale))
            else:
                line.append(f"{fmt(c['mean'] * scale)} ± {fmt(c['half_width'] * scale)}")
        out.append(f"| {k} | " + " | ".join(line) + " |")
    return "\n".join(out)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["k", "policy", "metric", "n", "mean", "std", "ci_low", "ci_high", "half_width", "values"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (r["metric"], -r["k"], r["policy"])):
        writer.writerow({**{f: r[f] for f in fields}, "values": ";".join(f"{v:.6g}" for v in r["values"])})
    return buf.getvalue()


@dataclass(frozen=True)
class _Grid:
    """What every cell of one compare shares."""

    setup: Setup
    score_run: str
    config: CompareConfig
    evaluation: EvalConfig
    probe_run: str | None
    show_progress: bool
    # (layers, seed) -> a cell's runs: policies that pick the same layers (at k near L, or the
    # searched set and the singles at small k) share one training, the same computation.
    trained: dict[tuple[tuple[int, ...], int], dict] = dataclasses.field(default_factory=dict)


def _cell(grid: _Grid, k: int, policy: str, seed: int) -> dict:
    """Train one (k, policy, seed) cell and evaluate it (both cached runs)."""
    sparse = cell_selection(grid.score_run, k, policy, seed, grid.config, grid.probe_run)
    setup = grid.setup.replace(training=dataclasses.replace(grid.setup.training, seed=seed))
    layers = sparse_run(setup, sparse)[1].adapter.layers
    assert layers is not None, "sparse_run resolves the layers"
    same = (tuple(layers), seed)
    if same not in grid.trained:
        grid.trained[same] = _train_and_evaluate(grid, setup, sparse)
    return {"k": k, "policy": policy, "seed": seed, **grid.trained[same]}


def _train_and_evaluate(grid: _Grid, setup: Setup, sparse: SparseConfig) -> dict:
    trained = run_sparse_training(setup, sparse, show_progress=grid.show_progress)
    evaluated = run_evaluation(None, grid.evaluation, train_run=trained.id, device=setup.model.device,
                               show_progress=grid.show_progress)
    summary = summary_of(trained)
    return {"layers": summary["layers"], "train_run": trained.id, "eval_run": evaluated.id,
            "trainable_parameters": summary["trainable_parameters"],
            "train_seconds": summary["seconds"], "adapter_sha256": adapter_checksum(trained),
            "metrics": headline(evaluated.read_json(EVAL_SUMMARY))}


def _base(grid: _Grid) -> dict:
    """The base model's evaluation (a cached run)."""
    model_cfg = grid.setup.model
    run = run_evaluation(model_cfg.model, grid.evaluation, data=grid.setup.data, device=model_cfg.device,
                         show_progress=grid.show_progress)
    return {"eval_run": run.id, "metrics": headline(run.read_json(EVAL_SUMMARY))}



def _write_summary(run: Run, score_run: str, model_cfg: ModelConfig, n_layers: int,
                   config: CompareConfig, results: list[dict], base: dict, partial: bool,
                   selection: dict | None = None) -> None:
    rows = aggregate(results, config.confidence)
    metrics = sorted({r["metric"] for r in rows}, key=lambda m: (not m.endswith("/acc"), m))
    payload: CompareJson = {
        "score_run": score_run, "model": model_cfg.model, "n_layers": n_layers, "partial": partial,
        "config": {**to_dict(config), "storage": redact(config.storage) if config.storage else None},
        "metrics": metrics, "cells": rows, "results": results,
        "base": base, "tables": {m: format_table(rows, m, config.policies) for m in metrics}}
    reference = reference_policy(config.policies)
    diffs = paired_differences(results, reference, config.confidence) if reference else []
    if diffs:
        assert reference is not None, "differences need a reference policy"
        others = [p for p in config.policies if p != reference]
        payload["differences"] = {"reference": reference, "cells": diffs, "tables": {
            m: format_table(diffs, m, others, f"{m} minus {reference}, paired by seed") for m in metrics}}
    if selection is not None:
        payload["selection"] = selection
    run.write_json(SUMMARY, payload)
    atomic_write_bytes(run.file(TABLE), to_csv(rows).encode())


def selection_overlap(probe_data: dict, data: DataConfig) -> dict:
    """How much of the comparison's sample the probe saw: the number of our validation and
    training examples that were in the probe's sample (train or validation). Zero shared
    validation examples means the probe's data never judges its own selection."""
    from floe.pipeline.data import data_config, load_split
    seen = load_split(data_config(probe_data))
    ours = load_split(data)
    key = lambda e: repr((e["messages"], e["response"]))  # noqa: E731
    probe_keys = {key(e) for e in seen.train + seen.val}
    return {"probe_data": probe_data, "val_seen_by_probe": sum(key(e) in probe_keys for e in ours.val),
            "train_seen_by_probe": sum(key(e) in probe_keys for e in ours.train),
            "n_val": len(ours.val), "n_train": len(ours.train)}


def _probe_selection(probe_run: str | None, config: CompareConfig, fingerprint: dict,
                     data: DataConfig) -> dict | None:
    """Check the probe run a 'probe' column needs; what compare.json records about it."""
    if not any(p in MEASURED for p in config.policies):
        return None
    if probe_run is None:
        raise ValueError("policy probe ranks layers by a probe run: give --probe-run ID (floe probe)")
    run = open_probe_run(probe_run)
    if run.config["model"] != fingerprint:
        raise ValueError(f"probe run {probe_run} measured {run.config['model'].get('model')}, not "
                         f"the score run's {fingerprint.get('model')}")
    return {"probe_run": run.id, **selection_overlap(run.config["data"], data)}


def compare_key(scored: Run, setup: Setup, evaluation: EvalConfig, config: CompareConfig,
                selection: dict | None) -> dict:
    """What defines the comparison (not the storage, which only shares the work)."""
    key = {"floe": KEY_VERSIONS["compare"], "score_run": scored.id, "model": scored.config["warmup"]["model"],
           "data": data_key(setup.data), "adapter": to_dict(dataclasses.replace(setup.adapter, layers=None)),
           "train": {**to_dict(setup.training), "seed": None}, "eval": to_dict(evaluation),
           "compare": {k: v for k, v in to_dict(config).items() if k not in ("storage", "study_name")}}
    if selection is not None:  # comparisons without policy probe keep their keys
        key["probe_run"] = selection["probe_run"]
    return key


def run_compare(score_run: str, setup: Setup, evaluation: EvalConfig, config: CompareConfig,
                force: bool = False, show_progress: bool = True, probe_run: str | None = None) -> Run:
    """Train and evaluate every (k, policy, seed) cell; write compare.json and compare.csv.
    ``setup``'s model is the score run's (its device and loading options are the caller's);
    its adapter's layers and training seed are the cells'. Policy ``probe`` takes its
    ranking from ``probe_run``; give ``setup.data`` another seed than the probe's so the
    probe is judged on data it never saw (compare.json's "selection")."""
    scored = open_score_run(score_run)
    scored.verify()
    n_layers = model_shape(setup.model).n_layers
    cells = [(k, policy, seed) for seed in config.seeds  # seed-major: an early look covers every cell
             for k, policy in plan(config, n_layers)]
    selection = _probe_selection(probe_run, config, scored.config["warmup"]["model"], setup.data)
    storage = open_storage(config.storage) if config.storage else None  # a bad URL: no run folder left
    run = run_for("compare", compare_key(scored, setup, evaluation, config, selection))
    if reuse_finished(run, force):
        return run
    grid = _Grid(setup, scored.id, config, evaluation, probe_run, show_progress)

    def write(base: dict, results: list[dict], partial: bool) -> None:
        _write_summary(run, scored.id, setup.model, n_layers, config, results, base, partial=partial,
                       selection=selection)
    # Shared: no lock; several workers on one cache write the same compare.json.
    with (run.hold() if storage is None else contextlib.nullcontext(run)):
        run.log(event="start", stage="compare", total_steps=len(cells), resumed_from=0)
        if storage is None:
            _local(run, grid, cells, write)
        else:
            _shared(run, grid, cells, storage, write)
        run.finish([SUMMARY, TABLE])
    return run


def _local(run: Run, grid: _Grid, cells: list[tuple[int, str, int]], write) -> None:
    base = _base(grid)
    results: list[dict] = []
    for k, policy, seed in cells:
        results.append(_cell(grid, k, policy, seed))
        run.log(event="progress", stage="compare", done=len(results), total=len(cells), k=k, policy=policy,
                seed=seed)
        write(base, results, partial=len(results) < len(cells))  # the table so far, for a look


def _shared(run: Run, grid: _Grid, cells: list[tuple[int, str, int]], storage, write) -> None:
    """Cell 0 of the shared grid is the base model's evaluation, then the trainings."""
    labels = ["base model"] + [f"k {k} {policy} seed {seed}" for k, policy, seed in cells]

    def compute(i: int) -> dict:
        return _base(grid) if i == 0 else _cell(grid, *cells[i - 1])

    def progress(so_far: list) -> None:
        done = [r for r in so_far[1:] if r is not None]
        run.log(event="progress", stage="compare", done=len(done), total=len(cells))
        if so_far[0] is not None and len(done) < len(cells):  # complete: only the final summary
            write(so_far[0], done, partial=True)

    results = share_cells(storage, grid.config.study_name or run.id, labels, compute, on_result=progress)
    write(results[0], results[1:], partial=False)
