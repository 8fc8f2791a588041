"""Successive halving over layers, as pure functions: every layer is measured on a small
training budget, the better half goes on to twice the budget, and so on until the full
budget (the halving of Jamieson & Talwalkar, Optuna's SuccessiveHalvingPruner, with the
layer as the one categorical parameter).

``halving_schedule`` plans the rungs; ``successive_halving`` runs them over a
``measure(layer, steps) -> gain`` callback and returns the ranking: the survivors of the
last rung by their gain there, then the layers dropped at each earlier rung by their gain
at that rung (a layer dropped early ranks below every layer that went further).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypedDict

__all__ = ["Halving", "halving_cost", "halving_schedule", "rank_by_rungs", "successive_halving"]


class Halving(TypedDict):
    ranking: list[int]                # every layer, most useful first
    rungs: list[dict]                 # per rung: steps, layers, gains (same order), kept
    measured: dict[int, dict[int, float]]  # layer -> {steps: gain}


def halving_schedule(n_layers: int, max_steps: int, min_steps: int = 1, eta: int = 2,
                     keep: int = 1) -> list[tuple[int, int]]:
    """(layers measured, steps) per rung. The last rung trains at ``max_steps``; each rung
    before it at 1/eta of the next one's steps (at least ``min_steps``), on eta times as
    many layers (every layer on the first rung). The number of rungs is the most that
    keeps the first rung's steps >= min_steps and the last rung's layers >= ``keep``."""
    if n_layers < 1 or max_steps < 1 or min_steps < 1 or eta < 2 or keep < 1:
        raise ValueError(f"halving needs n_layers, max_steps, min_steps, keep >= 1 and eta >= 2, got "
                         f"{n_layers}, {max_steps}, {min_steps}, {keep}, {eta}")
    if min_steps > max_steps:
        raise ValueError(f"min_steps {min_steps} is above max_steps {max_steps}")
    rungs = 1
    while (max_steps // eta ** rungs >= min_steps
           and math.ceil(n_layers / eta ** rungs) >= keep and n_layers / eta ** rungs >= 1):
        rungs += 1
    plan = []
    for r in range(rungs):
        steps = max(min_steps, max_steps // eta ** (rungs - 1 - r))
        count = n_layers if r == 0 else max(keep, math.ceil(n_layers / eta ** r))
        plan.append((min(count, n_layers), steps))
    return plan


def halving_cost(schedule: list[tuple[int, int]]) -> int:
    """Training steps the schedule takes (each rung retrains its layers from scratch)."""
    return sum(n * steps for n, steps in schedule)


def rank_by_rungs(rungs: list[dict]) -> list[int]:
    """Layers by how far they went, then by their gain at their last rung (ties: lower
    layer first). A None gain (not measurable) ranks last within its rung."""
    last: dict[int, tuple[int, float]] = {}
    for depth, rung in enumerate(rungs):
        for layer, gain in zip(rung["layers"], rung["gains"]):
            last[layer] = (depth, -math.inf if gain is None else gain)
    return sorted(last, key=lambda k: (-last[k][0], -last[k][1], k))


def successive_halving(layers: list[int], measure: Callable[[int, int], float],
                       schedule: list[tuple[int, int]]) -> Halving:
    """Run the schedule: measure every remaining layer at the rung's steps, keep the best
    ``count`` of the next rung. ``measure`` is called once per (layer, rung)."""
    if len(schedule) and schedule[0][0] != len(layers):
        raise ValueError(f"the schedule's first rung measures {schedule[0][0]} layers, not the "
                         f"{len(layers)} given")
    remaining, rungs = list(layers), []
    measured: dict[int, dict[int, float]] = {}
    for r, (_, steps) in enumerate(schedule):
        gains = [measure(k, steps) for k in remaining]
        for k, g in zip(remaining, gains):
            measured.setdefault(k, {})[steps] = g
        order = rank_by_rungs([{"layers": remaining, "gains": gains}])
        nxt = schedule[r + 1][0] if r + 1 < len(schedule) else len(remaining)
        kept = sorted(order[:nxt])
        rungs.append({"steps": steps, "layers": remaining, "gains": gains, "kept": kept})
        remaining = kept
    return {"ranking": rank_by_rungs(rungs), "rungs": rungs, "measured": measured}
