"""A joint probe's set search in the app (issue 20): which probe run's search applies to a
score run, the measured policies a probe run offers (``probe``; ``probe-set`` only with a
search), and the curve under the Train & export page's k slider: the predicted validation
loss of each ranking's top-k at every k, with the suggested k and how it was computed.

The curve is a prediction: the joint probe's all-layer adapter with only the set's
adapters switched on (floe.experiments.cheap_probe), not a sparse adapter trained on those
layers. The search is opt-in (``floe probe --schedule joint --set-search``): about L^2
validation passes per seed. Pure data and plotly figures, no Streamlit.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from floe.app.common import policy_colors, skip_corrupt
from floe.app.compare import compare_payload, compare_runs_where
from floe.experiments.calibration import Calibration, calibration, differing_settings
from floe.pipeline.policies import POLICIES, measured_policies
from floe.store.artifacts import SetSearch
from floe.store.runs import Run

__all__ = ["CURVE_NAMES", "OTHER_SEARCH_COLOR", "calibration_figure", "calibration_sentence", "calibrations",
           "curve_caption", "curve_colors", "curve_figure",
           "curve_frame", "curve_label", "curve_order", "curve_probe", "measured_options", "no_search_line",
           "offered_by", "probes_for", "search_command", "set_search_of", "slider_curve"]

# A curve's name in the legend (the others: the policy's own name).
CURVE_NAMES = {"forward": "forward selection", "backward": "backward elimination",
               "probe": "probe (top-k singles)"}
# The search that did worse; the better one is policy probe-set and takes its colour.
OTHER_SEARCH_COLOR = "#9e9e9e"
_SEARCHES = ("forward", "backward")


# --------------------------------------------------------------------------- which probe run
def set_search_of(probe_run: Run) -> SetSearch | None:
    """The probe run's set search (probe.json's ``set_search``); None without one, or for a
    run whose files are damaged."""
    from floe.app.validation import probe_payload
    with skip_corrupt():
        return probe_payload(probe_run).get("set_search") or None
    return None


def offered_by(probe_run: Run) -> list[str]:
    """The measured policies a probe run can rank by (none for a damaged run)."""
    from floe.app.validation import probe_payload
    with skip_corrupt():
        return measured_policies(probe_payload(probe_run))
    return []


def measured_options(probes: list[Run]) -> list[str]:
    """The measured policies these finished probe runs offer, in POLICIES order: ``probe``
    with any of them, ``probe-set`` with one that has a set search."""
    offered = {policy for run in probes for policy in offered_by(run)}
    return [p for p in POLICIES if p in offered]


def probes_for(policy: str, probes: list[Run]) -> dict[str, Run]:
    """The probe runs (by id, in the given order) that rank the layers by ``policy``, a
    measured policy: any finished probe for ``probe``, one with a set search for ``probe-set``."""
    return {run.id: run for run in probes if policy in offered_by(run)}


def curve_probe(probes: list[Run], chosen: Run | None = None) -> Run | None:
    """The probe run whose set search the curve draws: ``chosen`` (the page's probe run, for
    a measured policy) when it has one, else the first of ``probes`` (the finished probes of
    the score run's model and data, recommend.finished_probes's order) that has one; None
    when none has."""
    for run in ([chosen] if chosen is not None else []) + list(probes):
        if run.kind == "probe" and set_search_of(run) is not None:
            return run
    return None


# --------------------------------------------------------------------------- the curve
def curve_label(found: Mapping[str, Any], name: str) -> str:
    """A curve's legend entry: the better search is named as policy probe-set."""
    label = CURVE_NAMES.get(name, name)
    return f"{label} = probe-set" if name == found["better"] else label


def curve_colors(found: Mapping[str, Any]) -> dict[str, str]:
    """Each curve's colour: a policy's own (common.policy_colors), the better search
    probe-set's, the other search grey."""
    colors = policy_colors()
    out = {}
    for name in found["curves"]:
        if name == found["better"]:
            out[name] = colors["probe-set"]
        elif name in _SEARCHES:
            out[name] = OTHER_SEARCH_COLOR
        else:
            out[name] = colors.get(name, OTHER_SEARCH_COLOR)
    return out


def curve_order(found: Mapping[str, Any]) -> list[str]:
    """The curves in legend order: the better search (probe-set), the probe's singles, the
    other search, then the policies in POLICIES order (the stored order is not kept:
    probe.json is written with sorted keys)."""
    policy_at = {p: i for i, p in enumerate(POLICIES)}
    first = [found["better"], "probe", *(s for s in _SEARCHES if s != found["better"])]
    rest = sorted((n for n in found["curves"] if n not in first), key=lambda n: (policy_at.get(n, len(POLICIES)), n))
    return [n for n in first if n in found["curves"]] + rest


def curve_frame(found: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (ranking, k), rankings in curve_order: the predicted validation loss of
    the ranking's top-k, from k = 0 (no adapter: the base model's measured loss) to every
    probed layer. Columns ranking, label, k, val_loss."""
    rows = []
    for name in curve_order(found):
        losses, label = found["curves"][name], curve_label(found, name)
        rows.append({"ranking": name, "label": label, "k": 0, "val_loss": float(found["base_loss"])})
        rows += [{"ranking": name, "label": label, "k": int(k), "val_loss": float(loss)}
                 for k, loss in zip(found["ks"], losses)]
    return pd.DataFrame(rows, columns=["ranking", "label", "k", "val_loss"])


def slider_curve(found: Mapping[str, Any], policy: str) -> str:
    """The curve that tells what the page's policy buys at k: its own when the search drew
    one, the better search's for probe-set (and for a policy without a curve)."""
    return policy if policy in found["curves"] and policy != "probe-set" else found["better"]


def curve_figure(found: Mapping[str, Any], k: int) -> go.Figure:
    """Every ranking's predicted loss per k, one line each (the better search, probe-set,
    drawn thick), the suggested k as a dashed vertical line, the loss it had to reach as a
    dotted horizontal one, and the slider's k."""
    frame, colors = curve_frame(found), curve_colors(found)
    fig = go.Figure()
    for name, rows in frame.groupby("ranking", sort=False):
        fig.add_trace(go.Scatter(
            x=rows["k"].tolist(), y=rows["val_loss"].tolist(), name=str(rows["label"].iloc[0]),
            mode="lines+markers" if len(rows) <= 40 else "lines",
            line={"color": colors[str(name)], "width": 3 if name == found["better"] else 1.5,
                  "dash": "dot" if name in _SEARCHES and name != found["better"] else "solid"}))
    suggested = found["suggested"]
    if suggested["k"] is not None:
        fig.add_vline(x=suggested["k"], line_dash="dash", line_color=colors[found["better"]],
                      annotation_text=f"suggested k = {suggested['k']}", annotation_position="top right")
    if suggested["target_loss"] is not None:
        fig.add_hline(y=suggested["target_loss"], line_dash="dot", line_color=OTHER_SEARCH_COLOR,
                      annotation_text=f"{suggested['tolerance']:.0%} of the all-layer gain",
                      annotation_position="bottom left")
    fig.add_vline(x=k, line_dash="dot", line_color="#444", annotation_text=f"slider k = {k}",
                  annotation_position="bottom right")
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="k (layers adapted)",
                      yaxis_title="predicted validation loss",
                      legend={"orientation": "h", "y": -0.25, "x": 0, "font": {"size": 11}})
    return fig


def curve_caption(found: Mapping[str, Any], probe_run: Run, k: int, policy: str, score_run: Run | None = None) -> str:
    """One sentence group under the curve: where it comes from, the suggested k and how it
    was computed (the tolerance, the all-layer gain), and what the slider's k buys."""
    suggested = found["suggested"]
    name = slider_curve(found, policy)
    text = (f"Predicted validation loss of each ranking's top-k, from the set search of the joint probe "
            f"`{probe_run.id}` (no training per k: sparse adapters trained on those layers may differ). "
            f"Suggested k (dashed line): {suggested['how']}. ")
    if k in found["ks"]:
        loss = found["curves"][name][found["ks"].index(k)]
        share = ((found["base_loss"] - loss) / suggested["all_gain"]) if suggested["all_gain"] > 0 else None
        bought = f", {share:.0%} of the all-layer gain" if share is not None else ""
        text += f"Slider at k = {k}: predicted loss {loss:.4f} on the {curve_label(found, name)} line{bought}."
    else:
        text += f"Slider at k = {k}: beyond the {len(found['ks'])} layers the probe measured."
    source, theirs = found.get("score_run"), set(found["curves"]) & {"floe", "adapter-norm"}
    if source and theirs and score_run is not None and source != score_run.id:
        text += f" The {' and '.join(sorted(theirs))} lines are the rankings of score run `{source}`."
    return text


# --------------------------------------------------------------------------- how to get one
def search_command(score_run: Run) -> list[str]:
    """``floe probe`` arguments for this score run's joint probe with its set search: the
    recommendation panel's cheap probe (the same options, so a finished one is measured
    again with the search added) plus ``--set-search``."""
    from floe.app import forms
    from floe.app.estimates import PROBE_KEEP, probe_values
    values: dict[str, Any] = {**probe_values(score_run, "joint"), "set_search": True}
    return ["probe", "--score-run", score_run.id, *forms.cli_args(forms.form_options("probe"), values, PROBE_KEEP)]


def no_search_line(score_run: Run, n_layers: int) -> str:
    """The one line shown instead of the curve: how to get a set search, and its cost."""
    from floe.store.jobs import display_command
    return (f"No predicted loss per k: no probe of this model and data has a set search. It is opt-in for its "
            f"cost, about L² = {n_layers ** 2} validation passes per seed for these {n_layers} layers (the joint "
            f"probe alone: {n_layers + 1}): `{display_command(search_command(score_run))}`")


# --------------------------------------------------------------------------- calibration
def calibrations(probe_run: Run, root: Path | None = None) -> list[tuple[Run, Calibration]]:
    """Each compare run that trained from this probe (``--probe-run``), newest first, with
    the calibration of the probe's set search against its trained cells (none without a
    search)."""
    found = set_search_of(probe_run)
    if found is None:
        return []
    out = []
    for run in compare_runs_where("probe_run", probe_run.id, root):
        with skip_corrupt():
            settings = differing_settings(probe_run.config, run.config)
            out.append((run, calibration(found, compare_payload(run), settings)))
    return out


def calibration_figure(found: Calibration) -> go.Figure:
    """Trained against predicted validation loss, one point per (policy, k) cell, coloured by
    policy, with the line trained = predicted."""
    cells = found["cells"]
    colors = policy_colors()
    fig = go.Figure()
    for policy in sorted({c["policy"] for c in cells}):
        mine = [c for c in cells if c["policy"] == policy]
        fig.add_trace(go.Scatter(
            x=[c["predicted"] for c in mine], y=[c["trained"] for c in mine], mode="markers+text",
            text=[f"k={c['k']}" for c in mine], textposition="top center", name=POLICIES.get(policy, policy),
            marker={"size": 10, "color": colors.get(policy, OTHER_SEARCH_COLOR)}))
    if cells:
        lo = min(min(c["predicted"], c["trained"]) for c in cells)
        hi = max(max(c["predicted"], c["trained"]) for c in cells)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="trained = predicted",
                                 line={"color": OTHER_SEARCH_COLOR, "dash": "dot"}))
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis_title="predicted (joint adapter, only the set on)",
                      yaxis_title="trained (sparse adapter, mean over seeds)",
                      legend={"orientation": "h", "y": -0.25, "x": 0, "font": {"size": 11}})
    return fig


def calibration_sentence(found: Calibration) -> str:
    """What the calibration says: ρ with its interval over how many cells, the mean gap,
    and under which differing settings the two were read."""
    n = len(found["cells"])
    if n < 3:
        return f"Only {n} trained set(s) match a curve of the search: a correlation needs 3 or more."
    lo, hi = found["spearman_ci"]
    interval = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else ""
    rho = found["spearman"]
    reading = ("orders the trained results" if lo is not None and lo > 0 else
               "does not reliably order the trained results (the interval reaches 0)")
    settings = found["conditions"]
    where = ("under the probe's own data and training settings" if not settings else
             "with these settings differing from the probe's: "
             + ", ".join(f"{k} {v[0]} → {v[1]}" for k, v in settings.items()))
    if any(k.startswith("data.") for k in settings):
        where += (" (another validation sample: the gap mixes the prediction's error with the change of "
                  "sample; the order is what carries over)")
    gap = found["mean_gap"] or 0.0
    return (f"Over {n} trained sets (each (policy, k) cell's; a set two policies chose counts once, the "
            f"all-layer set, the joint adapter itself, not at all) the predicted loss {reading}: "
            f"Spearman ρ = {rho:+.2f}{interval} "
            f"(at 0.9 or more the curve can stand in for training each set). "
            f"Trained minus predicted: {gap:+.4f} nats on average, "
            f"{where}.")
