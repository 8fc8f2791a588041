"""Agreement metrics on hand-computed values (floe.method.agreement)."""
import math

import pytest

from floe.method.agreement import (
    agreement,
    bootstrap_ci,
    partial_spearman,
    precision_at_k,
    rank_values,
    ranking_scores,
    spearman,
)


def test_ranks_average_ties():
    assert rank_values([10, 30, 20, 30]) == [1.0, 3.5, 2.0, 3.5]


def test_spearman_on_hand_computed_values():
    # ranks x: 1 2 3 4 5, ranks y: 2 1 4 3 5 -> d^2 = 1+1+1+1+0 = 4, rho = 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])


def test_partial_spearman_given_depth():
    # Ranks: x = (1,2,3,4), y = (2,1,4,3), z = (1,2,3,4): r_xy = r_yz = 0.6, r_xz = 1 ->
    # x is z's ranks, so nothing is left once z is partialled out: undefined.
    assert math.isnan(partial_spearman([1, 2, 3, 4], [2, 1, 4, 3], [1, 2, 3, 4]))
    # x = (2,1,3,4,5), y = (1,3,2,5,4): r_xy = 1 - 6*8/120 = 0.6, r_xz = 0.9, r_yz = 0.8 ->
    # (0.6 - 0.72) / sqrt(0.19 * 0.36) = -0.2 / sqrt(0.19)
    assert partial_spearman([2, 1, 3, 4, 5], [1, 3, 2, 5, 4], [1, 2, 3, 4, 5]) == \
        pytest.approx(-0.2 / math.sqrt(0.19))
    # (1,3,2,4) vs (2,1,4,3): r_xy = 0, r_xz = 0.8, r_yz = 0.6 -> -0.48 / 0.48 = -1
    assert partial_spearman([1, 3, 2, 4], [2, 1, 4, 3], [1, 2, 3, 4]) == pytest.approx(-1.0)


def test_precision_at_every_k():
    # top-1 {0} vs {2}: 0; top-2 {0,1} vs {2,1}: 1/2; top-3 {0,1,2} vs {2,1,3}: 2/3; all: 1
    assert precision_at_k([0, 1, 2, 3], [2, 1, 3, 0]) == pytest.approx([0, 0.5, 2 / 3, 1])
    assert precision_at_k([3, 2, 1, 0], [3, 2, 1, 0]) == [1.0] * 4


def test_ranking_scores_and_bootstrap():
    assert ranking_scores([2, 0, 1]) == [2.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="every layer"):
        ranking_scores([0, 0, 1])
    x = list(range(12))
    lo, hi = bootstrap_ci(spearman, (x, x), n_boot=200)
    assert lo == hi == pytest.approx(1.0)  # perfectly monotone in every resample
    noisy = [((7 * k) % 12) for k in x]
    lo, hi = bootstrap_ci(spearman, (x, noisy), n_boot=400)
    assert lo < spearman(x, noisy) < hi


def test_agreement_of_a_subset_probe():
    ranking = [5, 4, 3, 2, 1, 0]          # deepest first
    gains = [0.1, 0.3, 0.2]               # probed layers 1, 3, 5
    out = agreement(ranking, gains, layers=[1, 3, 5], n_boot=200)
    # scores of layers 1, 3, 5 under the ranking: 2, 4, 6; gain ranks 1, 3, 2 -> rho 0.5
    assert out["spearman"] == pytest.approx(0.5)
    assert out["partial_spearman"] is None  # the ranking is depth itself
    # truth top order: 3, 5, 1; ranking restricted: 5, 3, 1 -> P@1 0, P@2 1, P@3 1
    assert out["precision_at_k"] == pytest.approx([0.0, 1.0, 1.0])
    assert len(out["spearman_ci"]) == 2


def test_spread_precision_scores_the_evenly_spaced_layers_it_adapts():
    """Spread's rho comes from its ranking, its precision@k from what it adapts at k."""
    from floe.experiments.validation import agreement_table
    from floe.pipeline.policies import spread_layers, spread_ranking
    n = 30
    layers = {"n_layers": n, "ranking": list(range(n)), "ranking_without_refinement": list(range(n)),
              "baselines": {"all": list(range(n))}}
    # The four largest gains on 0, 10, 19, 29: the evenly spaced four.
    gains = [1.0 if k in (0, 10, 19, 29) else 0.01 * k for k in range(n)]
    probe = {"n_layers": n, "layers": list(range(n)), "gain": gains}
    figures = agreement_table(layers, probe, n_boot=10)["spread"]
    truth = sorted(range(n), key=lambda k: (-gains[k], k))
    assert figures["precision_at_k"][3] == 1.0
    assert figures["precision_at_k"] == [len(set(spread_layers(n, k)) & set(truth[:k])) / k
                                         for k in range(1, n + 1)]
    assert figures["spearman"] == pytest.approx(agreement(spread_ranking(n), gains, n_boot=10)["spearman"])
    # A probe of a subset: spread over the probed layers.
    sub = {"n_layers": n, "layers": [1, 3, 5, 7, 9], "gain": [5.0, 0.0, 0.0, 0.0, 4.0]}
    assert agreement_table(layers, sub, n_boot=10)["spread"]["precision_at_k"][:2] == [0.0, 1.0]
