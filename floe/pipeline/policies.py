"""The layer-selection policies: the one list of them, with their labels, and the ranking
each reads from (or derives from) a score run's layers.json, or, for the measured
policies, from a probe run's probe.json: ``probe`` ranks the layers by their measured
gain alone, ``probe-set`` takes the better set search of a joint probe (the set of size
k is its top k: both searches give nested sets)."""
from __future__ import annotations

from floe.pipeline.score import load_layers
from floe.store import artifacts
from floe.store.artifacts import LayersJson, ProbeJson
from floe.store.runs import DONE, Run, open_run

__all__ = ["MEASURED", "POLICIES", "PROBE_SUMMARY", "available_policies", "check_policy", "depth_ranking",
           "layer_ranges", "measured_policies", "open_probe_run", "probe_ranking", "probe_set_ranking", "ranking_for",
           "ranking_from", "selected_layers", "spread_layers", "spread_ranking"]

PROBE_SUMMARY = artifacts.PROBE

# name -> label shown in the app. Order: FLoE first, then the baselines (METHOD 12), then
# the practitioners' heuristics (docs/method.md, "Policies").
POLICIES: dict[str, str] = {
    "floe": "FLoE (with refinement)",
    "floe-no-refine": "FLoE without refinement",
    "random": "random (seeded)",
    "weight-norm": "pretrained weight norm",
    "adapter-norm": "warm-up adapter norm",
    "all": "all layers",
    "deepest": "deepest layers (last k)",
    "shallowest": "shallowest layers (first k)",
    "spread": "evenly spread layers",
    "floe-reverse": "FLoE reversed (bottom k)",
    "lora-drop": "LoRA-drop (adapter output norm)",
    "ht-sr": "HT-SR alpha (AlphaLoRA)",
    "probe": "select by measurement (probe run's gain)",
    "probe-set": "select a set by measurement (joint probe's set search)",
}
# Policies ranked by a probe run (no score run needed); the others by a score run.
MEASURED = {"probe", "probe-set"}
# Policies read from layers.json "baselines" under these keys; the others are derived.
_STORED = {"random", "weight-norm", "adapter-norm", "all", "lora-drop", "ht-sr"}


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose among {', '.join(POLICIES)}")
    return policy


def depth_ranking(n_layers: int, deepest_first: bool = True) -> list[int]:
    order = list(range(n_layers))
    return order[::-1] if deepest_first else order


def spread_layers(n_layers: int, k: int) -> list[int]:
    """What policy ``spread`` adapts (METHOD 12): k evenly spaced layers, round(i (n-1) / (k-1))
    for i = 0..k-1, halves rounded down (ties to the lower index); k = 1: the middle layer,
    (n-1) // 2. E.g. n=30: k=4 -> 0, 10, 19, 29; k=8 -> 0, 4, 8, 12, 17, 21, 25, 29.
    These sets are not nested (k=1: 14, k=2: 0, 29), so no one ranking has them as its
    top-k for every k: select with ``selected_layers``, not a ranking's first k."""
    if not 1 <= k <= n_layers:
        raise ValueError(f"k={k} must be in 1..{n_layers} (the model's layers)")
    if k == 1:
        return [(n_layers - 1) // 2]
    # round half down of i (n-1) / (k-1), in integers: ceil((2 i (n-1) - (k-1)) / (2 (k-1)))
    return [-((k - 1 - 2 * i * (n_layers - 1)) // (2 * (k - 1))) for i in range(k)]


def selected_layers(policy: str, ranking: list[int], k: int) -> list[int]:
    """The k layers ``policy`` adapts, sorted: the first k of its ``ranking`` (of all the
    layers), except for ``spread``, whose selection is ``spread_layers`` at every k."""
    if policy == "spread":
        return spread_layers(len(ranking), k)
    return sorted(ranking[:k])


def spread_ranking(n_layers: int) -> list[int]:
    """Policy ``spread``'s ranking of all layers, used only where a ranking of every layer
    is needed (its Spearman rho with measured gains); what it adapts at k is
    ``spread_layers``. Farthest-point order: each next layer is the one farthest from those
    already taken, the ends counting as taken at -1 and n (ties: lower index), so that
    every top-k is spread over the depth, e.g. n=30: 14, 22, 6, 10, 18, 26, 2, ..."""
    taken: list[int] = []
    while len(taken) < n_layers:
        fences = sorted([-1, n_layers, *taken])
        best, best_gap = -1, -1.0
        for lo, hi in zip(fences, fences[1:]):
            if hi - lo > 1 and (hi - lo) / 2 > best_gap:
                best, best_gap = (lo + hi) // 2, (hi - lo) / 2
        taken.append(best)
    return taken


def layer_ranges(layers: list[int]) -> str:
    """A layer selection as text, runs of three or more layers as ranges:
    [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7, 8" (the memory plan's and the results tables' format)."""
    runs: list[list[int]] = []
    for k in layers:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def ranking_from(layers: LayersJson, policy: str) -> list[int]:
    """The layer ranking of ``policy`` (most important first) in a layers.json payload."""
    check_policy(policy)
    if policy in MEASURED:
        raise ValueError(f"policy {policy!r} ranks layers by a probe run, not a score run: "
                         "give --probe-run ID (a run of floe probe)")
    n = layers["n_layers"]
    if policy == "floe":
        return layers["ranking"]
    if policy == "floe-no-refine":
        return layers["ranking_without_refinement"]
    if policy == "floe-reverse":
        return layers["ranking"][::-1]
    if policy in ("deepest", "shallowest"):
        return depth_ranking(n, deepest_first=policy == "deepest")
    if policy == "spread":
        return spread_ranking(n)
    stored = layers.get("baselines", {}).get(policy.replace("-", "_"))
    if not isinstance(stored, list):  # None: not stored (a computed key reads as object)
        raise ValueError(f"this score run has no {policy!r} ranking (it was computed by an older "
                         "floe): run the analysis again to get it")
    return stored


def available_policies(layers: LayersJson) -> list[str]:
    """The policies whose ranking this layers.json holds or implies."""
    return [p for p in POLICIES if p not in MEASURED
            and (p not in _STORED or p.replace("-", "_") in layers.get("baselines", {}))]


def probe_ranking(probe: ProbeJson) -> list[int]:
    """The probed layers, most useful first: a cheap probe's own ranking, else by mean
    gain (ties and layers without a finished cell: lower layer first, unmeasured last)."""
    if probe.get("ranking"):
        return [int(k) for k in probe["ranking"]]
    gains = dict(zip(probe["layers"], probe["gain"]))
    return sorted(gains, key=lambda k: (gains[k] is None, -(gains[k] or 0.0), k))


def probe_set_ranking(probe: ProbeJson, run_id: str = "") -> list[int]:
    """Policy ``probe-set``'s ranking: the order of the joint probe's better set search
    (forward selection or backward elimination), whose first k are its set of size k."""
    found = probe.get("set_search")
    if not found:
        which = f"probe run {run_id}" if run_id else "this probe run"
        schedule = probe.get("schedule", "cells")
        if schedule == "joint":
            raise ValueError(f"policy probe-set reads a joint probe's set search, and {which} has none (the "
                             "search is off by default for its cost): re-run floe probe --schedule joint "
                             "--set-search with the same options (it measures that probe again and adds the "
                             "search: about L^2 validation passes per seed for L layers)")
        raise ValueError(f"policy probe-set reads a joint probe's set search, and {which} is a {schedule} "
                         "probe: run floe probe --schedule joint --set-search on the same model and data, and "
                         "give its run")
    return [int(k) for k in found["ranking"]]


def measured_policies(probe: ProbeJson) -> list[str]:
    """The measured policies a probe run can rank by (``probe-set`` only with a set search)."""
    return [p for p in POLICIES if p in MEASURED and (p != "probe-set" or probe.get("set_search"))]


def open_probe_run(run_id: str) -> Run:
    """A finished probe run (clear errors for a missing, unfinished or other kind of run)."""
    try:
        run = open_run(run_id)
    except FileNotFoundError:
        raise ValueError(f"no probe run {run_id!r}: run floe probe first (its JSON names the run)") from None
    if run.kind != "probe":
        raise ValueError(f"run {run_id} is a {run.kind} run, not a probe run")
    if run.status != DONE or not run.file(PROBE_SUMMARY).exists():
        raise ValueError(f"probe run {run_id} is not finished ({run.status}): run the same floe "
                         "probe again to complete it")
    return run


def ranking_for(run: Run, policy: str) -> list[int]:
    """The layer ranking of ``policy`` from a finished score run, or (a measured policy)
    from a finished probe run."""
    if policy in MEASURED:
        if run.kind != "probe":
            raise ValueError(f"policy {policy!r} ranks layers by a probe run, and {run.id} is a "
                             f"{run.kind} run: give --probe-run ID")
        probe = run.read_json(PROBE_SUMMARY)
        return probe_set_ranking(probe, run.id) if policy == "probe-set" else probe_ranking(probe)
    return ranking_from(load_layers(run), policy)
