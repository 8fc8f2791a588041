"""Small statistics shared by the experiments: Student's t and the t-interval of a mean.

SciPy's Student's t (a dependency of lm-eval already) rather than a hand-written incomplete
beta function; imported on first use, so pages that draw no interval do not pay for it."""
from __future__ import annotations

import math
import statistics
from typing import TypedDict

__all__ = ["Interval", "mean_ci", "t_cdf", "t_quantile"]


class Interval(TypedDict):
    """What ``mean_ci`` returns: artifacts.MeanCI with every field, the mean always set."""

    n: int
    mean: float
    std: float | None
    half_width: float | None
    ci_low: float | None
    ci_high: float | None



def t_cdf(t: float, df: float) -> float:
    from scipy.stats import t as student_t
    return float(student_t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t."""
    from scipy.stats import t as student_t
    return float(student_t.ppf(p, df))


def mean_ci(values: list[float], confidence: float = 0.95) -> Interval:
    """Mean and the two-sided t-interval of the mean (None with one value)."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "half_width": None, "ci_low": None, "ci_high": None}
    std = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "half_width": half,
            "ci_low": mean - half, "ci_high": mean + half}
