"""What a selection costs, in words a person reads: seconds as "3.4 min", whether a probe
draws the analysis's data budget, the estimate of a probe's wall time from FLoE's on the
same data, and the probe form's values. Pure data, no Streamlit (floe.app.recommend and
the Validation page use it).
"""
from __future__ import annotations

from floe.store.runs import Run

__all__ = ["PROBE_KEEP", "SCHEDULE_COST", "SIZES", "analysis_sizes", "format_seconds", "probe_estimate",
           "probe_values", "same_budget"]

# Wall time of a probe over FLoE's warm-up + scoring on the same data, SmolLM2 on a 2-core
# CPU (bench/README.md, bench_cheap_probe): joint 0.78x since its readings replay the lower
# blocks (0.91-1.13x in two runs before), halving 3.76x,
# the full cell probe 736 s as 30 cached cells against FLoE's 101.9 s (7.2x).
SCHEDULE_COST: dict[str, tuple[float, float]] = {"joint": (0.78, 0.78), "halving": (3.76, 3.76),
                                                 "cells": (7.2, 7.2)}
# The analysis's data options a probe or a training takes over, so that both selections and
# the training see the same data budget.
SIZES = ("max_samples", "val_samples", "max_length")
# The probe's budget options: its own defaults are not the parser's (floe.cli.probe applies
# PROBE_BUDGET under what is typed), so a form passes them even at the parser's default.
PROBE_KEEP = ("max_samples", "val_samples", "max_length", "batch_size", "lr")


def analysis_sizes(score_run: Run) -> dict[str, int]:
    """The analysis's data sizes (SIZES) from its warm-up's config."""
    data = score_run.config["warmup"]["data"]
    return {name: int(data[name]) for name in SIZES if name in data}


def format_seconds(seconds: float | None) -> str:
    """Seconds as a person reads them: "48 s", "3.4 min", "1.2 h"."""
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _span(low: float, high: float) -> str:
    """A range of seconds in one unit, the high end's: "50-62 s", "1.6-1.9 min"."""
    text = format_seconds(high)
    if format_seconds(low) == text:
        return text
    number, unit = text.split(" ")
    scale = {"s": 1, "min": 60, "h": 3600}[unit]
    digits = 0 if unit == "s" else 1
    return f"{low / scale:.{digits}f}-{number} {unit}"


def same_budget(score_run: Run, data: dict) -> bool:
    """Whether ``data`` (a probe's data options) draws as many examples of as many tokens as
    the score run's warm-up did."""
    own = analysis_sizes(score_run)
    try:
        return all(int(data.get(name, -1)) == own.get(name) for name in ("max_samples", "max_length"))
    except (TypeError, ValueError):  # a form value being typed
        return False


def probe_estimate(score_run: Run, schedule: str = "joint", data: dict | None = None) -> dict:
    """How long a probe of this score run's model and data would take: FLoE's warm-up +
    scoring here (wall time) times the schedule's measured cost ratio on the same data
    (SCHEDULE_COST). {"low", "high" (seconds or None), "text"}. With another data budget
    than the analysis's, or without FLoE's timings, no number: the sentence says why."""
    from floe.experiments.validation import floe_cost
    low_x, high_x = SCHEDULE_COST.get(schedule, SCHEDULE_COST["cells"])
    bench = (f"{schedule} costs {low_x:g}" + (f"-{high_x:g}" if high_x != low_x else "")
             + "x FLoE's warm-up + scoring on the same data (bench/README.md)")
    if data is not None and not same_budget(score_run, data):
        return {"low": None, "high": None, "text": f"no estimate: this probe draws another data budget "
                f"than the analysis ({bench})"}
    floe = floe_cost(score_run, "wall")
    if floe is None:
        return {"low": None, "high": None, "text": f"no estimate: this analysis recorded no wall time ({bench})"}
    low, high = floe * low_x, floe * high_x
    span = _span(low, high)
    return {"low": low, "high": high,
            "text": f"about {span} ({bench}; FLoE took {format_seconds(floe)} on this analysis)"}


def probe_values(score_run: Run, schedule: str = "joint") -> dict[str, str]:
    """The probe form's values: the probe's training budget (floe.experiments.probe.PROBE_BUDGET),
    the analysis's data sizes (so both selections see the same data and their costs
    compare), and the schedule (the cheap joint one by default)."""
    from floe.experiments.probe import PROBE_BUDGET
    budget = {k: str(v) for part in PROBE_BUDGET.values() for k, v in part.items()}
    return {**budget, **{k: str(v) for k, v in analysis_sizes(score_run).items()}, "schedule": schedule}
