"""The layer-selection policies: the one list of them, with their labels, and the ranking
each reads from a score run's layers.json."""
from __future__ import annotations

from floe.pipeline.score import LayersJson, load_layers
from floe.store.runs import Run

__all__ = ["POLICIES", "check_policy", "ranking_for", "ranking_from"]

# name -> label shown in the app. Order: FLoE first, then the baselines (METHOD 12).
POLICIES: dict[str, str] = {
    "floe": "FLoE (with refinement)",
    "floe-no-refine": "FLoE without refinement",
    "random": "random (seeded)",
    "weight-norm": "pretrained weight norm",
    "adapter-norm": "warm-up adapter norm",
    "all": "all layers",
}


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose among {', '.join(POLICIES)}")
    return policy


def ranking_from(layers: LayersJson, policy: str) -> list[int]:
    """The layer ranking of ``policy`` (most important first) in a layers.json payload."""
    check_policy(policy)
    if policy == "floe":
        return layers["ranking"]
    if policy == "floe-no-refine":
        return layers["ranking_without_refinement"]
    return layers["baselines"][policy.replace("-", "_")]


def ranking_for(run: Run, policy: str) -> list[int]:
    """The layer ranking of ``policy`` from a finished score run."""
    return ranking_from(load_layers(run), policy)
