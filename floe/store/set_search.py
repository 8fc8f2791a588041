"""The shape of a joint probe's set search, probe.json's ``set_search`` (written by
floe.experiments.cheap_probe.search_sets, read by policy ``probe-set``; docs/artifacts.md).
Kept beside floe.store.artifacts, which re-exports it and checks probe.json with it.

Every loss is the joint adapter's validation loss with only the set's adapters switched
on, mean over the probe's seeds. Pure data: imports nothing of floe.
"""
from __future__ import annotations

from pydantic import ConfigDict, with_config
from typing_extensions import NotRequired, TypedDict  # pydantic needs it on Python < 3.12

__all__ = ["SetOrder", "SetSearch", "Suggestion"]

_STRICT = ConfigDict(extra="forbid", strict=True)  # as floe.store.artifacts checks every shape


@with_config(_STRICT)
class SetOrder(TypedDict):
    """One search's result (floe.method.setsearch): the set of size k is ``order[:k]``."""

    order: list[int]
    ks: list[int]                # the sizes the search reached
    losses: list[float]          # the predicted validation loss of the set of each size in ks


@with_config(_STRICT)
class Suggestion(TypedDict):
    """The suggested k: the smallest whose predicted gain reaches ``tolerance`` of the
    all-layer gain, on the curve of ``ranking`` (the better search's)."""

    k: int | None                # None: the all-layer gain is <= 0, or no k reaches the target
    tolerance: float
    ranking: str
    all_gain: float              # base_loss - all_loss
    target_loss: float | None
    how: str                     # how it was computed, in words


@with_config(_STRICT)
class SetSearch(TypedDict):
    """probe.json's ``set_search``: both searches, the better one, every ranking's curve,
    the suggested k, and what it all cost beside the training."""

    forward: SetOrder            # greedy forward selection (ks 1..search_max_k)
    backward: SetOrder           # backward elimination from every probed layer (ks 1..L)
    better: str                  # "forward" or "backward": lower mean loss over the ks both reached
    mean_loss: dict[str, float]  # each search's mean loss over those ks
    ranking: list[int]           # policy probe-set's: the better search's order (rankings[better])
    ks: list[int]                # 1..L: the sizes every curve is read at
    rankings: dict[str, list[int]]  # name -> the ranking a curve is of: probe, forward, backward, deepest, ...
    curves: dict[str, list[float]]  # name -> the predicted validation loss of its top-k, per k in ks
    base_loss: float             # no adapter on
    all_loss: float              # every probed layer's adapter on
    suggested: Suggestion        # at the tolerance of the command that wrote it
    score_run: str | None        # where the floe and adapter-norm rankings came from (None: not drawn)
    search_max_k: int            # forward selection's largest set
    sets_evaluated: int          # sets the searches and curves evaluated (the singles and the empty set not)
    validation_passes: int       # sets_evaluated x n_seeds
    n_seeds: int
    train_seconds: float         # the joint trainings, all seeds
    search_seconds: float        # both searches
    curve_seconds: float         # the curves, beyond the sets the searches evaluated
    # Replay (floe.experiments.switched): extra passes that recorded a parent's blocks, and
    # the share of decoder blocks replayed, not computed (absent in probes written before it).
    recording_passes: NotRequired[int]
    blocks_replayed_share: NotRequired[float]
