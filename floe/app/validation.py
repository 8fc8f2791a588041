"""The Validation page: does a layer ranking predict what adapting a layer buys? Each
layer's measured gain (a probe run) under the score rows, score against gain per policy,
and the policy table (rho, partial rho given depth, precision@k) with a plain verdict.

No Streamlit here; the figures come from probe.json and layers.json through the
pipeline's readers (floe.experiments.validation)."""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from floe.app import common
from floe.app.heatmaps import SCALE
from floe.experiments.probe import SUMMARY as PROBE_SUMMARY
from floe.experiments.validation import (
    agreement_table,
    budget_curve_runs,
    direction,
    floe_cost,
    matching_probes,
    probe_cost,
    verdict,
)
from floe.method.agreement import ranking_scores
from floe.pipeline.policies import POLICIES, probe_ranking, ranking_from
from floe.store.artifacts import LayersJson, ProbeJson
from floe.store.runs import DONE, Run

__all__ = ["BUDGET_CURVE_POLICIES", "PRECISION_KS", "VERDICT_LABELS", "agreement", "budget_curve",
           "budget_curve_figure", "budget_curve_sentence", "data_budget", "gain_figure", "matching_probes",
           "measured_selection", "policy_table", "precision_figure", "probe_label", "probe_payload",
           "scatter_figure", "summary_sentence", "verdict_label"]

BUDGET_CURVE_POLICIES = ("floe", "adapter-norm", "lora-drop")  # the rankings that read the warm-up
PRECISION_KS = (1, 3, 5, 8)  # the table's precision@k columns (the figure shows every k)
VERDICT_LABELS = {"predicts": "predicts the gains", "chance": "no better than chance",
                  "away": "points away from the useful layers"}


def verdict_label(policy: str, figures: dict) -> str:
    """The verdict column: what the interval of ρ says (and, for a ranking that predicts the
    gains only as well as the layer index does, that)."""
    said = direction(figures)
    return "no better than depth" if said == "predicts" and verdict(policy, figures) else VERDICT_LABELS[said]


def _mtime(run: Run) -> int:
    try:
        return run.file(PROBE_SUMMARY).stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def probe_payload(run: Run) -> ProbeJson:
    """probe.json as written so far (a running probe rewrites it after every cell)."""
    return _probe_payload(str(run.path), _mtime(run))


@functools.lru_cache(maxsize=64)
def _probe_payload(path: str, stamp: int) -> ProbeJson:
    return Run(Path(path)).read_json(PROBE_SUMMARY)


def agreement(score_run: Run, probe_run: Run) -> dict[str, dict]:
    """policy -> agreement figures, memoised until the score run or probe.json changes
    (the bootstrap takes about a second)."""
    return _agreement(str(score_run.path), str(probe_run.path), _mtime(probe_run))


@functools.lru_cache(maxsize=64)
def _agreement(score_path: str, probe_path: str, stamp: int) -> dict:
    return agreement_table(common.layers(Run(Path(score_path))), _probe_payload(probe_path, stamp))


def measured_selection(score_run: Run, probe_run: Run, k: int) -> dict | None:
    """Policy probe ("select by measurement") from a finished probe: its top-k, what the
    probe cost and what FLoE's warm-up + scoring cost on the score run, both timed alike
    ("what" says how; None: unfinished)."""
    if probe_run.status != DONE:
        return None
    p = probe_payload(probe_run)
    order = probe_ranking(p)
    cost = probe_cost(p)
    floe = floe_cost(score_run, cost["basis"])
    ratio = cost["seconds"] / floe if cost["seconds"] is not None and floe else None
    probe_data, floe_data = data_budget(p["config"].get("data", {})), data_budget(score_run.config["warmup"]["data"])
    return {"label": POLICIES["probe"], "ranking": order, "layers": sorted(order[:k]),
            "seconds": cost["seconds"], "what": cost["what"], "floe_seconds": floe, "ratio": ratio,
            "probe_data": probe_data, "floe_data": floe_data, "same_data": probe_data == floe_data}


def data_budget(data: dict) -> str:
    """A selection's data budget: examples x tokens per example (cap)."""
    return f"{data.get('max_samples', '?')} examples × ≤ {data.get('max_length', '?')} tokens"


def probe_label(run: Run) -> str:
    p = probe_payload(run)
    done = sum(c["gain"] is not None for c in p["cells"])
    state = "partial" if p["partial"] else "done"
    schedule = "" if p.get("schedule", "cells") == "cells" else f"{p['schedule']} · "
    return (f"{schedule}{p['mode']} · {len(p['layers'])} layers · seeds {','.join(map(str, p['seeds']))} · "
            f"{done} cells ({state}) · {run.id.split('-', 1)[1][:6]}")


def gain_figure(layers: LayersJson, probe: ProbeJson, score_label: str) -> go.Figure:
    """Top: the FLoE score rows per layer (with and without refinement); below, on the
    same layer axis, each probed layer's mean gain with its t-interval."""
    n = layers["n_layers"]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.35, 0.65],
                        vertical_spacing=0.06)
    fig.add_trace(go.Heatmap(z=[layers["layer_scores"], layers["layer_scores_without_refinement"]],
                             x=list(range(n)), y=["FLoE score", "without refinement"],
                             colorscale=SCALE, colorbar={"title": "s_k", "len": 0.35, "y": 0.85},
                             hovertemplate="layer %{x}: %{z:.3f}<extra>%{y}</extra>"), row=1, col=1)
    xs, ys, up, down = [], [], [], []
    for k, ci in zip(probe["layers"], probe["gain_ci"]):
        mean, high, low = ci.get("mean"), ci.get("ci_high"), ci.get("ci_low")
        if mean is None:
            continue
        xs.append(k)
        ys.append(mean)
        up.append((high - mean) if high is not None else 0.0)
        down.append((mean - low) if low is not None else 0.0)
    fig.add_trace(go.Bar(x=xs, y=ys, error_y={"type": "data", "array": up, "arrayminus": down},
                         marker_color="#1f77b4", name="measured gain",
                         hovertemplate="layer %{x}: gain %{y:.4f}<extra></extra>"), row=2, col=1)
    what = "gain lost when left out" if probe["mode"] == "leave-one-out" else "gain adapted alone"
    fig.update_yaxes(title_text=f"validation-loss {what}", row=2, col=1)
    fig.update_xaxes(title_text="layer", range=[-0.5, n - 0.5], row=2, col=1)
    fig.update_layout(height=460, margin={"l": 60, "r": 20, "t": 30, "b": 40}, showlegend=False,
                      title={"text": score_label, "font": {"size": 12}})
    return fig


def scatter_figure(layers: LayersJson, probe: ProbeJson, policy: str, figures: dict) -> go.Figure:
    """One point per probed layer: its place in the policy's ranking against its gain."""
    scores = ranking_scores(ranking_from(layers, policy))
    pairs = [(k, scores[k], g) for k, g in zip(probe["layers"], probe["gain"]) if g is not None]
    lo, hi = figures["spearman_ci"]
    rho = figures["spearman"]
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
    fig = go.Figure(go.Scatter(
        x=[s for _, s, _ in pairs], y=[g for _, _, g in pairs], mode="markers+text",
        text=[f"L{k}" for k, _, _ in pairs], textposition="top center",
        hovertemplate="%{text}: ranked %{x}, gain %{y:.4f}<extra></extra>"))
    rho_text = "undefined" if rho is None else f"{rho:.2f}"
    fig.update_layout(title=f"{POLICIES[policy]}: ρ = {rho_text}{ci}", height=360,
                      xaxis_title=f"place in the ranking ({layers['n_layers']} = first)",
                      yaxis_title="measured gain", margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return fig


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _interval(pair: list) -> str:
    lo, hi = pair
    return "–" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]"


def policy_table(table: dict[str, dict]) -> pd.DataFrame:
    """One row per policy: rho and its interval, partial rho given depth and its interval,
    precision@k for a few k (random expects k/n), and the verdict. The held-out results of
    each policy's top-k are the Compare page's."""
    rows = []
    for policy, f in table.items():
        row = {"policy": POLICIES[policy], "verdict": verdict_label(policy, f), "ρ": _fmt(f["spearman"]),
               "ρ 95 % CI": _interval(f["spearman_ci"]), "partial ρ given depth": _fmt(f["partial_spearman"]),
               "partial 95 % CI": _interval(f["partial_spearman_ci"])}
        n = len(f["precision_at_k"])
        for k in PRECISION_KS:
            if k <= n:
                row[f"P@{k}"] = f"{f['precision_at_k'][k - 1]:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _rho(f: dict) -> str:
    lo, hi = f["spearman_ci"]
    return "ρ undefined" if f["spearman"] is None else \
        f"ρ {f['spearman']:+.2f}" + ("" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]")


def summary_sentence(table: dict[str, dict]) -> str:
    """The verdicts in one sentence: FLoE's, the ranking that predicts the gains best (the
    highest lower bound of ρ), and how many rankings fall under each verdict."""
    labels = {policy: verdict_label(policy, f) for policy, f in table.items()}
    parts = []
    if "floe" in table:
        parts.append(f"FLoE's ranking: **{labels['floe']}** ({_rho(table['floe'])})")
    predicting = [p for p, said in labels.items() if said == VERDICT_LABELS["predicts"] and p != "random"]
    if predicting:
        best = max(predicting, key=lambda p: table[p]["spearman_ci"][0])
        parts.append(f"the best predictor of the measured gains: **{POLICIES[best]}** ({_rho(table[best])})")
    else:
        parts.append("no ranking predicts the measured gains beyond chance and depth")
    counts: dict[str, int] = {}
    for said in labels.values():
        counts[said] = counts.get(said, 0) + 1
    order = [*VERDICT_LABELS.values(), "no better than depth"]
    tally = ", ".join(f"{counts[v]} {v}" for v in sorted(counts, key=order.index))
    return "; ".join(parts) + f". Of the {len(table)} rankings: {tally} (the verdict column)."


def precision_figure(table: dict[str, dict]) -> go.Figure:
    """Precision@k for every k and policy, with the random expectation k/n."""
    fig, colors = go.Figure(), common.policy_colors()
    for policy, f in table.items():
        ks = list(range(1, len(f["precision_at_k"]) + 1))
        fig.add_trace(go.Scatter(x=ks, y=f["precision_at_k"], mode="lines", name=POLICIES[policy],
                                 line={"color": colors.get(policy)}))
    if table:
        n = len(next(iter(table.values()))["precision_at_k"])
        fig.add_trace(go.Scatter(x=list(range(1, n + 1)), y=[k / n for k in range(1, n + 1)],
                                 mode="lines", name="random (expected)", line={"dash": "dash", "color": "grey"}))
    fig.update_layout(height=360, xaxis_title="k", yaxis_title="precision@k (share of the probe's top-k)",
                      yaxis_range=[0, 1.05], margin={"l": 60, "r": 20, "t": 30, "b": 40})
    return fig


def budget_curve(score_run: Run, probe_run: Run) -> pd.DataFrame:
    """Each warm-up-reading ranking's agreement with the probe, per warm-up length: one row per
    (score run of budget_curve_runs, policy), with the warm-up's steps, examples and tokens."""
    rows = []
    for run in budget_curve_runs(score_run, probe_run):
        budget, table = common.warmup_budget(run), agreement(run, probe_run)
        for policy in BUDGET_CURVE_POLICIES:
            if (f := table.get(policy)) and f["spearman"] is not None:
                lo, hi = f["spearman_ci"]
                rows.append({"run": run.id, "steps": budget["steps"], "examples": budget["examples"],
                             "tokens": budget["tokens"], "policy": policy, "rho": f["spearman"],
                             "low": lo, "high": hi, "this run": run.id == score_run.id})
    return pd.DataFrame(rows)


def budget_curve_figure(curve: pd.DataFrame) -> go.Figure:
    """ρ with the measured gains against the warm-up's optimizer steps (log axis), one line per
    ranking with its bootstrap interval; the zero line is chance."""
    fig, colors = go.Figure(), common.policy_colors()
    for policy, part in curve.groupby("policy", sort=False):
        part = part.sort_values("steps")
        ci = part[["low", "high"]].notna().all(axis=1)
        fig.add_trace(go.Scatter(
            x=part["steps"], y=part["rho"], mode="lines+markers", name=POLICIES[policy],
            line={"color": colors.get(policy)},
            error_y={"type": "data", "symmetric": False, "array": (part["high"] - part["rho"]).where(ci, 0),
                     "arrayminus": (part["rho"] - part["low"]).where(ci, 0)},
            customdata=part[["examples", "run"]],
            hovertemplate="%{x} steps over %{customdata[0]} examples: ρ %{y:+.2f}<br>%{customdata[1]}<extra></extra>"))
    fig.add_hline(y=0, line={"dash": "dash", "color": "grey"})
    fig.update_layout(height=360, xaxis={"title": "warm-up: optimizer steps", "type": "log"},
                      yaxis={"title": "ρ with the measured gains", "range": [-1.05, 1.05]},
                      margin={"l": 60, "r": 20, "t": 30, "b": 40})
    return fig


def budget_curve_sentence(curve: pd.DataFrame) -> str:
    """FLoE's agreement at the shortest and the longest warm-up, in words."""
    floe = curve[curve["policy"] == "floe"].sort_values("steps")
    if len(floe) < 2:
        return "FLoE's agreement is known at one warm-up length only."
    first, last = floe.iloc[0], floe.iloc[-1]

    def said(row) -> str:
        figures = {"spearman": row["rho"],
                   "spearman_ci": [None, None] if pd.isna(row["low"]) else [row["low"], row["high"]]}
        return f"{_rho(figures)}, {VERDICT_LABELS[direction(figures)]}"
    return (f"FLoE after {first['steps']} warm-up steps: {said(first)}; after {last['steps']} steps "
            f"({last['examples']} examples): {said(last)}.")
