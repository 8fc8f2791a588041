"""Set selection by measurement (floe.method.setsearch), on hand-built loss functions whose
best sets are known: layers interact, so the best pair is not the two best singles."""
import itertools

import pytest

from floe.method.setsearch import (
    MemoLoss,
    backward_elimination,
    better_search,
    completed_order,
    curve_of_ranking,
    forward_selection,
    memoised,
    suggested_k,
)

BASE = 3.0


def pairwise_loss(gains: dict[int, float], pairs: dict[tuple[int, int], float]):
    """base - sum of the layers' gains + each pair's interaction (positive: redundant,
    negative: the two complete each other); counts its calls."""
    calls: list[frozenset] = []

    def loss(layers: frozenset) -> float:
        calls.append(layers)
        value = BASE - sum(gains[k] for k in layers)
        return value + sum(v for (a, b), v in pairs.items() if a in layers and b in layers)
    loss.calls = calls
    return loss


def best_set(loss, layers, k):
    return min((frozenset(c) for c in itertools.combinations(layers, k)), key=loss)


# Layers 0 and 1 are the two best alone but redundant together: 0 with 2 is the best pair.
REDUNDANT = ({0: 1.0, 1: 0.9, 2: 0.5, 3: 0.1}, {(0, 1): 0.8})
# 0 is the best alone but spoils 1 and 2, which complete each other: {1, 2} is the best
# pair, and a greedy start from 0 never finds it.
SYNERGY = ({0: 1.0, 1: 0.6, 2: 0.6, 3: 0.05}, {(0, 1): 0.5, (0, 2): 0.5, (1, 2): -0.3})


def top_singles(loss, layers, k):
    return frozenset(sorted(layers, key=lambda j: (loss(frozenset({j})), j))[:k])


def test_forward_selection_finds_a_best_pair_that_is_not_the_two_best_singles():
    loss = pairwise_loss(*REDUNDANT)
    assert top_singles(loss, range(4), 2) == {0, 1}
    assert best_set(loss, range(4), 2) == {0, 2}
    out = forward_selection(range(4), loss)
    assert out["order"][:2] == [0, 2] and out["ks"] == [1, 2, 3, 4]
    assert out["losses"] == pytest.approx([2.0, 1.5, 1.4, 1.3])  # then 3, then 1 (redundant with 0)
    assert out["losses"][1] < loss(frozenset({0, 1}))


def test_backward_elimination_finds_the_pair_a_greedy_start_misses():
    loss = pairwise_loss(*SYNERGY)
    assert best_set(loss, range(4), 2) == {1, 2}
    forward = forward_selection(range(4), loss)
    assert set(forward["order"][:2]) != {1, 2}  # 0 first, then a tie broken to 1
    backward = backward_elimination(range(4), loss)
    assert set(backward["order"][:2]) == {1, 2}
    assert backward["order"] == [1, 2, 3, 0]  # 0 leaves first; 1 and 2 tie last: 2 goes, 1 ranks first
    assert backward["ks"] == [1, 2, 3, 4]
    assert backward["losses"] == pytest.approx([BASE - 0.6, BASE - 1.5, BASE - 1.55, BASE - 1.55])
    for k in backward["ks"]:  # nested: the set of size k is the first k
        assert backward["losses"][k - 1] == loss(frozenset(backward["order"][:k]))
    name, means = better_search({"forward": forward, "backward": backward})
    assert name == "backward" and means["backward"] < means["forward"]


def test_k_max_and_k_min_bound_the_searches():
    loss = pairwise_loss(*REDUNDANT)
    forward = forward_selection([3, 1, 0, 2, 2], loss, k_max=2)  # any order, duplicates ignored
    assert forward["order"] == [0, 2] and forward["ks"] == [1, 2]
    assert len(loss.calls) == 4 + 3  # two rounds over 4 then 3 layers
    backward = backward_elimination(range(4), pairwise_loss(*REDUNDANT), k_min=2)
    assert backward["ks"] == [2, 3, 4] and len(backward["order"]) == 4
    assert set(backward["order"][:2]) == {0, 2}  # the survivors, by index
    assert completed_order(forward["order"], [3, 2, 1, 0]) == [0, 2, 3, 1]
    # Compared only where both reached: at k = 2 (a tie here: the first named wins).
    name, means = better_search({"f": forward, "b": backward})
    assert name == "f" and means == {"f": pytest.approx(1.5), "b": pytest.approx(1.5)}
    with pytest.raises(ValueError, match="no set size"):
        better_search({"f": forward, "b": {"order": [], "ks": [3, 4], "losses": [1.0, 1.0]}})
    for bad in (dict(k_max=0), dict(k_max=5)):
        with pytest.raises(ValueError, match="k_max"):
            forward_selection(range(4), loss, **bad)
    with pytest.raises(ValueError, match="k_min"):
        backward_elimination(range(4), loss, k_min=5)
    with pytest.raises(ValueError, match="at least one layer"):
        forward_selection([], loss)


def test_one_layer_searches_are_that_layer():
    loss = pairwise_loss({7: 0.3}, {})
    assert forward_selection([7], loss) == {"order": [7], "ks": [1], "losses": [pytest.approx(2.7)]}
    assert backward_elimination([7], loss) == {"order": [7], "ks": [1], "losses": [pytest.approx(2.7)]}


def test_memoisation_evaluates_each_set_once_across_searches_and_curves():
    raw = pairwise_loss(*SYNERGY)
    memo = memoised(raw)
    assert memoised(memo) is memo  # searches given a memo share it
    forward_selection(range(4), memo)
    assert memo.evaluations == len(raw.calls) == 4 + 3 + 2 + 1  # L (L + 1) / 2 distinct sets
    assert len(set(raw.calls)) == len(raw.calls)  # never the same set twice
    backward = backward_elimination(range(4), memo)
    assert len(set(raw.calls)) == len(raw.calls) == memo.evaluations
    before = memo.evaluations
    backward_elimination(range(4), memo)  # asked again: nothing new
    curve_of_ranking(backward["order"], memo, range(1, 5))  # its own sets: all known
    assert memo.evaluations == before
    # Values known up front (the empty set, the singles a probe read already) are free.
    seeded = MemoLoss(raw, known={frozenset(): BASE})
    assert seeded(set()) == BASE and seeded.evaluations == 0
    assert seeded([2, 1]) == seeded((1, 2)) and seeded.evaluations == 1  # a set, whatever the order


def test_curve_of_a_ranking_is_the_loss_of_each_top_k():
    loss = pairwise_loss(*REDUNDANT)
    assert curve_of_ranking([0, 1, 2, 3], loss, [0, 1, 2, 4]) == pytest.approx([BASE, 2.0, 1.9, 1.3])
    assert curve_of_ranking([0, 2, 1, 3], loss, [2]) == pytest.approx([1.5])
    with pytest.raises(ValueError, match="0..4"):
        curve_of_ranking([0, 1, 2, 3], loss, [5])


def test_suggested_k_is_the_smallest_k_within_the_tolerance_of_the_all_layer_gain():
    ks, losses = [1, 2, 3, 4], [2.5, 2.25, 2.0625, 2.0]  # base 3: gains 0.5, 0.75, 0.9375, 1 (exact in binary)
    assert suggested_k(ks, losses, 3.0, 2.0) == 3  # the default: 90 % of the all-layer gain
    assert suggested_k(ks, losses, 3.0, 2.0, tolerance=0.75) == 2  # reaching the target exactly counts
    assert suggested_k(ks, losses, 3.0, 2.0, tolerance=1.0) == 4
    assert suggested_k(ks, losses, 3.0, 2.0, tolerance=0.5) == 1
    # A set better than all layers counts too; the ks need not be sorted.
    assert suggested_k([4, 3, 1], [2.0, 1.8, 2.9], 3.0, 2.0) == 3
    # Nothing reaches the target (the curve stops short of all layers): no k.
    assert suggested_k([1, 2], [2.5, 2.2], 3.0, 2.0) is None
    # The all-layer adapter gains nothing, or loses: no k is suggested.
    assert suggested_k(ks, losses, 2.0, 2.0) is None
    assert suggested_k(ks, [3.1, 3.2, 3.3, 3.4], 3.0, 3.4) is None
    assert suggested_k(ks, losses, 3.0, float("nan")) is None
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="tolerance"):
            suggested_k(ks, losses, 3.0, 2.0, tolerance=bad)
    with pytest.raises(ValueError, match="losses"):
        suggested_k(ks, losses[:2], 3.0, 2.0)


def test_each_set_is_asked_with_the_parent_it_grows_or_shrinks_by_one_layer():
    """A MemoLoss with_parent passes the parent on: the chosen set (forward), the kept set
    (backward), the top k-1 (a curve); each set differs from its parent by one layer."""
    asked = []

    def loss(layers, parent):
        asked.append((layers, parent))
        return -sum(layers) + 0.1 * len(layers) ** 2

    memo = MemoLoss(loss, with_parent=True)
    forward_selection(range(4), memo)
    backward_elimination(range(4), memo)
    curve_of_ranking([3, 0, 1, 2], memo, range(5))
    with_parent = [(s, p) for s, p in asked if p is not None]
    assert with_parent and all(len(s ^ p) == 1 for s, p in with_parent)
    assert asked[0] == (frozenset({0}), frozenset())  # the first round grows the empty set
    assert MemoLoss(lambda s: 1.0)(frozenset({1}), parent=frozenset()) == 1.0  # plain functions take none
