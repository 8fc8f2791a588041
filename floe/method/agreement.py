"""Agreement between a layer ranking and measured per-layer gains (pure functions).

A ranking (most important first) becomes per-layer scores ``n - position``, so every
policy is compared the same way. Against a probe's measured gains g:

* Spearman rho: the Pearson correlation of the ranks (ties get their average rank), with
  a bootstrap percentile interval over layers (layers resampled with replacement).
* Partial Spearman rho given depth: the rank correlation of score and gain once the
  layer index is partialled out of both, ``(r_sg - r_sd r_gd) / sqrt((1 - r_sd^2)(1 - r_gd^2))``.
  Near 0 means the ranking says nothing about the gains that depth does not already say.
* Precision@k: the share of the ranking's top-k (or of a policy's own selection at k,
  for spread) that is in the probe's top-k, for every k. A random ranking has expected
  precision k / n.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

__all__ = ["agreement", "bootstrap_ci", "partial_spearman", "partial_spearman_or_nan",
           "precision_at_k", "rank_values", "ranking_scores", "spearman", "spearman_or_nan"]


def rank_values(values: Sequence[float]) -> list[float]:
    """1-based ranks, ascending; tied values share their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan  # a constant variable correlates with nothing
    return sxy / math.sqrt(sxx * syy)


def _check(*columns: Sequence[float]) -> None:
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"columns of different lengths: {[len(c) for c in columns]}")
    if n < 2:
        raise ValueError(f"need at least 2 layers for a rank correlation, got {n}")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of two per-layer columns (nan if either is constant)."""
    _check(x, y)
    return _pearson(rank_values(x), rank_values(y))


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman's rho of x and y given z (nan when x or y is a function of z's ranks)."""
    _check(x, y, z)
    rx, ry, rz = rank_values(x), rank_values(y), rank_values(z)
    rxy, rxz, ryz = _pearson(rx, ry), _pearson(rx, rz), _pearson(ry, rz)
    denominator = (1 - rxz * rxz) * (1 - ryz * ryz)
    if not denominator > 1e-12:  # also nan
        return math.nan
    return (rxy - rxz * ryz) / math.sqrt(denominator)


def bootstrap_ci(statistic, columns: Sequence[Sequence[float]], n_boot: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile interval of ``statistic(*columns)`` over layers resampled with
    replacement; resamples where it is undefined (nan) are left out. (None, None) when
    fewer than half of them are defined."""
    n = len(columns[0])
    rng = random.Random(seed)
    values = []
    for _ in range(n_boot):
        pick = [rng.randrange(n) for _ in range(n)]
        value = statistic(*[[c[i] for i in pick] for c in columns])
        if not math.isnan(value):
            values.append(value)
    if len(values) < n_boot / 2:
        return None, None
    values.sort()
    tail = (1 - confidence) / 2
    lo = values[int(math.floor(tail * (len(values) - 1)))]
    hi = values[int(math.ceil((1 - tail) * (len(values) - 1)))]
    return lo, hi


def ranking_scores(ranking: Sequence[int]) -> list[float]:
    """Per-layer scores of a ranking: n for the first layer, 1 for the last."""
    n = len(ranking)
    if sorted(ranking) != list(range(n)):
        raise ValueError(f"a ranking must list every layer 0..{n - 1} once, got {list(ranking)}")
    scores = [0.0] * n
    for position, layer in enumerate(ranking):
        scores[layer] = float(n - position)
    return scores


def precision_at_k(ranking: Sequence[int], truth: Sequence[int]) -> list[float]:
    """|top-k of ranking ∩ top-k of truth| / k for k = 1..n (both rankings of all layers)."""
    if sorted(ranking) != sorted(truth):
        raise ValueError("the two rankings do not list the same layers")
    seen_a, seen_b, common, out = set(), set(), 0, []
    for k, (a, b) in enumerate(zip(ranking, truth), 1):
        common += (a in seen_b) + (b in seen_a) + (a == b)
        seen_a.add(a)
        seen_b.add(b)
        out.append(common / k)
    return out


def _nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def agreement(ranking: Sequence[int], gains: Sequence[float], layers: Sequence[int] | None = None,
              n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
              selection: Callable[[int], Sequence[int]] | None = None) -> dict:
    """All agreement figures of one ranking of all layers against the measured gains of
    ``layers`` (default: every layer; a probe of a subset compares on that subset).

    ``selection``: k -> the k of ``layers`` the policy adapts, for a policy whose selection
    at k is not its ranking's first k (spread); precision@k then scores that selection,
    while rho and partial rho still use the ranking.

    Returns spearman, spearman_ci, partial_spearman (given depth), partial_spearman_ci and
    precision_at_k (k = 1..len(layers), over the probed layers)."""
    layers = list(range(len(ranking))) if layers is None else list(layers)
    if len(gains) != len(layers):
        raise ValueError(f"{len(gains)} gains for {len(layers)} layers")
    full = ranking_scores(ranking)
    score = [full[k] for k in layers]
    depth = [float(k) for k in layers]
    sub_ranking = [k for k in ranking if k in set(layers)]
    truth = [layers[i] for i in sorted(range(len(layers)), key=lambda i: (-gains[i], layers[i]))]
    rho_ci = bootstrap_ci(spearman_or_nan, (score, gains), n_boot, confidence, seed)
    partial_ci = bootstrap_ci(partial_spearman_or_nan, (score, gains, depth), n_boot, confidence, seed)
    return {"spearman": _nan_to_none(spearman(score, gains)), "spearman_ci": list(rho_ci),
            "partial_spearman": _nan_to_none(partial_spearman(score, gains, depth)),
            "partial_spearman_ci": list(partial_ci),
            "precision_at_k": (precision_at_k(sub_ranking, truth) if selection is None else
                               [len(set(selection(k)) & set(truth[:k])) / k
                                for k in range(1, len(truth) + 1)])}


def spearman_or_nan(x, y) -> float:
    """spearman for bootstrap resamples: nan instead of an error on degenerate ones."""
    return _pearson(rank_values(x), rank_values(y))


def partial_spearman_or_nan(x, y, z) -> float:
    try:
        return partial_spearman(x, y, z)
    except ValueError:
        return math.nan
