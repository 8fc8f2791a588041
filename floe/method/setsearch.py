"""Choosing a SET of layers by measurement, as pure functions (issue 20).

Every ranking policy takes the k best layers one by one, but layers interact: two
neighbours that each buy a lot alone may buy little more together, and a layer that buys
little alone may complete a set. Given ``loss_of_set(frozenset) -> float`` (in the joint
cheap probe: the validation loss with only those layers' adapters switched on, no
training), these search the sets themselves:

* ``forward_selection``: greedy, from nothing; add the layer whose adapter, switched on
  with the chosen ones, lowers the loss most. Sum over rounds of the layers left:
  about k x L evaluations up to size k (L(L+1)/2 for every size).
* ``backward_elimination``: from every layer, remove the one whose removal raises the
  loss least, down to ``k_min``. About L^2/2 evaluations whatever the size wanted.

Both give nested sets (the set of size k is ``order[:k]``), so each is a ranking.
``curve_of_ranking`` is the loss a top-k ranking buys at each k; ``suggested_k`` the
smallest k within a tolerance of the all-layer gain. The callable is memoised
(``MemoLoss``): one set asked twice, by one search or by several sharing the memo, is
evaluated once. Each set is asked with its parent, the set it grows or shrinks by one
layer (the chosen ones, the kept ones, the top k-1): a ``MemoLoss(..., with_parent=True)``
passes it on, so an evaluation that can reuse the parent's work (the joint probe replays
the decoder blocks below the layer that differs) does. Ties go to the lower layer index
(it ranks first), so results are deterministic.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypedDict

__all__ = ["LossOfSet", "MemoLoss", "SetOrder", "backward_elimination", "better_search", "completed_order",
           "curve_of_ranking", "forward_selection", "memoised", "suggested_k"]

LossOfSet = Callable[[frozenset[int]], float]


class SetOrder(TypedDict):
    """A search's result: the set of size k is ``order[:k]`` for each k in ``ks``, and
    ``losses[i]`` is the loss of the set of size ``ks[i]``."""

    order: list[int]
    ks: list[int]
    losses: list[float]


class MemoLoss:
    """``loss_of_set`` with a memory: each distinct set reaches the function once.
    ``evaluations`` counts those calls (the ``known`` values given up front are free);
    ``on_evaluation(evaluations)`` follows them (a progress log). With ``with_parent`` the
    function is called as ``loss_of_set(layers, parent)`` where the caller names a parent
    (a frozenset, or None)."""

    def __init__(self, loss_of_set: Callable[..., float], known: Mapping[frozenset[int], float] | None = None,
                 on_evaluation: Callable[[int], None] | None = None, with_parent: bool = False):
        self._loss_of_set = loss_of_set
        self._on_evaluation = on_evaluation
        self._with_parent = with_parent
        self.values: dict[frozenset[int], float] = dict(known or {})
        self.evaluations = 0

    def __call__(self, layers: Iterable[int], parent: Iterable[int] | None = None) -> float:
        key = frozenset(layers)
        if key not in self.values:
            if self._with_parent:
                value = self._loss_of_set(key, None if parent is None else frozenset(parent))
            else:
                value = self._loss_of_set(key)
            self.values[key] = float(value)
            self.evaluations += 1
            if self._on_evaluation is not None:
                self._on_evaluation(self.evaluations)
        return self.values[key]


def memoised(loss_of_set: LossOfSet) -> MemoLoss:
    """``loss_of_set`` memoised (itself if it already is, so searches can share one memo)."""
    return loss_of_set if isinstance(loss_of_set, MemoLoss) else MemoLoss(loss_of_set)


def _distinct(layers: Iterable[int]) -> list[int]:
    out = sorted({int(k) for k in layers})
    if not out:
        raise ValueError("a set search needs at least one layer")
    return out


def forward_selection(layers: Iterable[int], loss_of_set: LossOfSet, k_max: int | None = None) -> SetOrder:
    """Greedy forward selection up to ``k_max`` layers (default: all): each round adds the
    layer whose set with the chosen ones has the lowest loss (ties: lower index)."""
    pool = _distinct(layers)
    k_max = len(pool) if k_max is None else k_max
    if not 1 <= k_max <= len(pool):
        raise ValueError(f"k_max={k_max} must be in 1..{len(pool)} (the layers searched)")
    loss = memoised(loss_of_set)
    chosen: list[int] = []
    losses: list[float] = []
    while len(chosen) < k_max:
        left = [k for k in pool if k not in chosen]
        best = min(left, key=lambda k: (loss([*chosen, k], parent=chosen), k))
        chosen.append(best)
        losses.append(loss(chosen))
    return {"order": chosen, "ks": list(range(1, k_max + 1)), "losses": losses}


def backward_elimination(layers: Iterable[int], loss_of_set: LossOfSet, k_min: int = 1) -> SetOrder:
    """Backward elimination from every layer down to ``k_min``: each round removes the layer
    whose removal leaves the lowest loss (ties: the higher index goes, so the lower ranks
    first). ``order`` is the reverse order of removal, the ``k_min`` survivors first
    (among themselves by index): the set of size k is ``order[:k]`` for k >= k_min."""
    pool = _distinct(layers)
    if not 1 <= k_min <= len(pool):
        raise ValueError(f"k_min={k_min} must be in 1..{len(pool)} (the layers searched)")
    loss = memoised(loss_of_set)
    kept = list(pool)
    removed: list[int] = []
    by_size = {len(kept): loss(kept)}
    while len(kept) > k_min:
        worst = min(kept, key=lambda k: (loss([j for j in kept if j != k], parent=kept), -k))
        kept.remove(worst)
        removed.append(worst)
        by_size[len(kept)] = loss(kept)
    ks = sorted(by_size)
    return {"order": kept + removed[::-1], "ks": ks, "losses": [by_size[k] for k in ks]}


def completed_order(order: Sequence[int], rest: Sequence[int]) -> list[int]:
    """``order`` followed by the layers of ``rest`` it lacks, in ``rest``'s order (a forward
    search stopped at k_max, completed by another ranking)."""
    seen = set(order)
    return [*order, *(k for k in rest if k not in seen)]


def better_search(searches: Mapping[str, SetOrder]) -> tuple[str, dict[str, float]]:
    """The search with the lowest mean loss over the sizes every search reached (ties: the
    first named), and each one's mean there."""
    if not searches:
        raise ValueError("no search to compare")
    common = set.intersection(*(set(s["ks"]) for s in searches.values()))
    if not common:
        raise ValueError("the searches share no set size to compare them at")
    means = {name: statistics.fmean(loss for k, loss in zip(s["ks"], s["losses"]) if k in common)
             for name, s in searches.items()}
    return min(means, key=lambda name: means[name]), means


def curve_of_ranking(ranking: Sequence[int], loss_of_set: LossOfSet, ks: Iterable[int]) -> list[float]:
    """The loss of the ranking's top-k at each k of ``ks`` (0: the empty set)."""
    loss = memoised(loss_of_set)
    out = []
    for k in ks:
        if not 0 <= k <= len(ranking):
            raise ValueError(f"k={k} must be in 0..{len(ranking)} (the ranking's length)")
        out.append(loss(ranking[:k], parent=ranking[:k - 1] if k else None))
    return out


def suggested_k(ks: Sequence[int], losses: Sequence[float], base_loss: float, all_loss: float,
                tolerance: float = 0.9) -> int | None:
    """The smallest k whose gain over the base reaches ``tolerance`` of the all-layer gain,
    ``base - loss_k >= tolerance * (base - all_loss)``. None when the all-layer set gains
    nothing (its gain <= 0: no k is worth adapting by this measure) or no k of ``ks``
    reaches the target."""
    if not 0 < tolerance <= 1:
        raise ValueError(f"tolerance must be in (0, 1], got {tolerance}")
    if len(ks) != len(losses):
        raise ValueError(f"{len(ks)} ks but {len(losses)} losses")
    all_gain = base_loss - all_loss
    if not math.isfinite(all_gain) or all_gain <= 0:
        return None
    reached = [k for k, loss in zip(ks, losses) if base_loss - loss >= tolerance * all_gain]
    return min(reached) if reached else None
