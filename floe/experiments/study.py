"""Analyses over score runs: warm-up + scoring in one go, and the data-ratio stability
study (one analysis per ratio, the paper's Fig. 7), whose stability.json is built here
for study runs and for any group of score runs alike."""
from __future__ import annotations

import dataclasses
from typing import Any

from floe import KEY_VERSIONS
from floe.pipeline.data import data_key
from floe.pipeline.score import ScoreConfig, load_layers, run_score
from floe.pipeline.setup import Setup
from floe.pipeline.warmup import run_warmup
from floe.store import artifacts
from floe.store.artifacts import StabilityJson
from floe.store.config import to_dict
from floe.store.runs import Run, reuse_finished, run_for

__all__ = ["STABILITY", "load_stability", "ranks_of", "run_analysis", "run_study", "stability_payload"]

STABILITY = artifacts.STABILITY



def run_analysis(setup: Setup, score: ScoreConfig, force: bool = False, show_progress: bool = True) -> Run:
    """Warm-up + scoring, each reused when already done."""
    warm = run_warmup(setup, force=force, show_progress=show_progress)
    model = setup.model
    return run_score(warm, score, model.device, force=force, show_progress=show_progress,
                     trust_remote_code=model.trust_remote_code, device_map=model.device_map)


def ranks_of(ranking: list[int]) -> list[int]:
    """rank (1 = most important) of each layer, from a ranking (layer indices in order)."""
    ranks = [0] * len(ranking)
    for position, layer in enumerate(ranking, 1):
        ranks[layer] = position
    return ranks


def stability_payload(score_runs: dict[float, Run]) -> StabilityJson:
    """stability.json's content for score runs that differ in their data ratio."""
    ratios = sorted(score_runs, reverse=True)
    layers = {str(r): load_layers(score_runs[r]) for r in ratios}
    return {"ratios": ratios, "score_runs": {str(r): score_runs[r].id for r in ratios},
            "ranks": {r: ranks_of(p["ranking"]) for r, p in layers.items()},
            "ranks_without_refinement": {r: ranks_of(p["ranking_without_refinement"])
                                         for r, p in layers.items()}}


def load_stability(run: Run) -> StabilityJson:
    """stability.json of a finished, intact study run."""
    run.verify()
    return run.read_json(STABILITY)


def run_study(setup: Setup, score: ScoreConfig, ratios: list[float], force: bool = False,
              show_progress: bool = True) -> Run:
    """The data-ratio stability study: one warm-up and scoring per ratio, same seed."""
    if not ratios:
        raise ValueError("--ratios needs at least one ratio")
    for r in ratios:
        if not 0 < r <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {r}")
    key: dict[str, Any] = {
        "floe": KEY_VERSIONS["study"], "model": to_dict(setup.model), "data": data_key(setup.data),
        "adapter": to_dict(setup.adapter), "train": to_dict(setup.training), "score": to_dict(score),
        "ratios": sorted(ratios, reverse=True)}
    key["model"].pop("device")
    study = run_for("study", key)
    if reuse_finished(study, force):
        return study
    with study.hold():
        runs = {}
        for r in key["ratios"]:
            study.log(event="stage", stage=f"ratio {r}", message=f"warm-up and scoring at ratio {r}")
            runs[r] = run_analysis(setup.replace(data=dataclasses.replace(setup.data, ratio=r)), score,
                                   force, show_progress)
        study.write_json(STABILITY, stability_payload(runs))
        study.finish([STABILITY])
    return study
