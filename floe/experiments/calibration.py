"""Calibration of the set search's predictions against trained sparse adapters (issue 20).

A joint probe's set search predicts the validation loss of any set of layers by switching
on only that set's adapters of ONE jointly trained all-layer adapter. The truth is a sparse
adapter trained on those layers alone. A compare run with the probe's ``probe`` column
(``floe compare --probe-run``) trains exactly such adapters: for each of its cells (policy,
k, the layers it adapted) the prediction is read from the curve whose top-k is that very
set (matched by the set, not by the policy's name), and set against the trained loss, mean
over the compare's seeds. A set two policies chose is one point; the all-layer set is
reported apart (it is the joint adapter itself). Pure functions on the two artifacts.

The two are read under different conditions whenever the compare's budget or data seed
differs from the probe's (a fair compare judges on another sample): the gap in nats then
mixes the budget with the prediction's error, and only the ranking (Spearman over cells)
says whether the curve orders the trained results. ``conditions`` says which differ.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, TypedDict

from floe.method.agreement import bootstrap_ci, spearman_or_nan
from floe.store.artifacts import CompareJson, SetSearch

__all__ = ["Calibration", "CalibrationCell", "calibration", "differing_settings", "predicted_loss"]


class CalibrationCell(TypedDict):
    policy: str                  # the first policy (by name) that chose the set
    also: list[str]              # other policies of the compare that chose the same set at this k
    k: int
    layers: list[int]
    predicted: float             # the joint adapter's loss with only these layers on
    trained: float               # mean over the compare's seeds of the sparse adapter's val loss
    trained_values: list[float]
    gap: float                   # trained - predicted, nats


class Calibration(TypedDict):
    cells: list[CalibrationCell]  # one per distinct set below all layers: what the statistics are over
    all_layers: CalibrationCell | None  # the all-layer set: the joint adapter itself (the same training
    #                              when the settings agree), so left out of the statistics
    unmatched: list[dict[str, Any]]  # compare cells whose set no curve of the search holds
    spearman: float | None       # predicted against trained, over cells (None: fewer than 3)
    spearman_ci: list[float | None]  # bootstrap 95 % over cells
    mean_gap: float | None       # mean of trained - predicted
    conditions: dict[str, Any]   # what differs between the prediction's and the training's setting


def predicted_loss(search: SetSearch, layers: list[int]) -> float | None:
    """The set search's predicted loss of exactly ``layers``: the curve point of a ranking
    whose top-k is that set (k = 0: the base model; every layer: the all-layer loss)."""
    want, k = sorted(layers), len(layers)
    if k == 0:
        return search["base_loss"]
    if want == sorted(search["rankings"]["probe"]):
        return search["all_loss"]
    for name, ranking in search["rankings"].items():
        if k <= len(ranking) and sorted(ranking[:k]) == want:
            return search["curves"][name][search["ks"].index(k)]
    return None


def _trained(compare: CompareJson) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (policy, k): the layers trained (the first seed's; a seeded random policy's
    sets differ by seed and are left out) and each seed's validation loss."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for r in compare["results"]:
        if "val_loss" not in r["metrics"]:
            continue
        cell = cells.setdefault((r["policy"], r["k"]), {"layers": sorted(r["layers"]), "values": [], "same": True})
        cell["same"] &= sorted(r["layers"]) == cell["layers"]
        cell["values"].append(r["metrics"]["val_loss"])
    return {key: c for key, c in cells.items() if c["same"]}


def calibration(search: SetSearch, compare: CompareJson,
                conditions: Mapping[str, Any] | None = None, n_boot: int = 2000) -> Calibration:
    """Each compare cell's trained loss against the search's prediction for its set; the
    Spearman correlation over cells with a bootstrap interval, and the mean gap."""
    by_set: dict[tuple[int, ...], CalibrationCell] = {}
    unmatched = []
    for (policy, k), found in sorted(_trained(compare).items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if tuple(found["layers"]) in by_set:  # two policies chose one set: one point, both named
            by_set[tuple(found["layers"])]["also"].append(policy)
            continue
        predicted = predicted_loss(search, found["layers"])
        if predicted is None:
            unmatched.append({"policy": policy, "k": k, "layers": found["layers"]})
            continue
        trained = statistics.fmean(found["values"])
        by_set[tuple(found["layers"])] = {
            "policy": policy, "also": [], "k": k, "layers": found["layers"], "predicted": predicted,
            "trained": trained, "trained_values": found["values"], "gap": trained - predicted}
    every = sorted(search["rankings"]["probe"])
    all_layers = by_set.pop(tuple(every), None)
    cells = list(by_set.values())
    x, y = [c["predicted"] for c in cells], [c["trained"] for c in cells]
    rho = spearman_or_nan(x, y) if len(cells) >= 3 else float("nan")
    lo, hi = bootstrap_ci(spearman_or_nan, [x, y], n_boot=n_boot) if len(cells) >= 3 else (None, None)
    return {"cells": cells, "all_layers": all_layers, "unmatched": unmatched, "spearman": None if rho != rho else rho,
            "spearman_ci": [lo, hi], "mean_gap": statistics.fmean(c["gap"] for c in cells) if cells else None,
            "conditions": dict(conditions or {})}


def differing_settings(probe_config: Mapping[str, Any], compare_config: Mapping[str, Any]) -> dict[str, list]:
    """The data and training settings in which a compare's trainings differ from the probe
    that predicted them (``data.seed``: another sample), as ``name -> [probe, compare]``."""
    out = {}
    for part in ("data", "train"):
        mine, theirs = probe_config.get(part) or {}, compare_config.get(part) or {}
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                out[f"{part}.{name}"] = [mine.get(name), theirs.get(name)]
    return out
