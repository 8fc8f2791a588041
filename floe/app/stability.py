"""The Stability page: each layer's rank across data ratios, with and without refinement
(the paper's Fig. 7)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from floe.app.common import describe, finished, run_label, skip_corrupt
from floe.experiments.study import load_stability, stability_payload
from floe.store.artifacts import StabilityJson
from floe.store.runs import Run

__all__ = ["stability_figure", "stability_sources", "stability_summary", "stability_table"]


def _ratio_key(run: Run) -> str | None:
    """Score runs that differ only in the data ratio share this key."""
    cfg = json.loads(json.dumps(run.config))
    try:
        cfg["warmup"]["data"].pop("ratio")
    except KeyError:
        return None
    for drop in ("warmup_run", "kind"):
        cfg.pop(drop, None)
    return json.dumps(cfg, sort_keys=True)


def stability_sources(root: Path | None = None) -> dict[str, StabilityJson]:
    """label -> stability payload (stability.json's shape): finished study runs, and groups
    of finished score runs that differ only in their data ratio."""
    sources = {}
    for study in finished("study", root):
        with skip_corrupt():
            sources[f"study · {run_label(study)}"] = load_stability(study)
    groups: dict[str, dict[float, Run]] = {}
    for run in finished("score", root):
        key = _ratio_key(run)
        if key is not None:
            groups.setdefault(key, {}).setdefault(describe(run)["ratio"], run)
    for group in groups.values():
        if len(group) < 2:
            continue
        with skip_corrupt():
            payload = stability_payload(group)
            ratios = payload["ratios"]
            first = group[ratios[0]]
            label = f"score runs · {run_label(first).rsplit(' · ', 1)[0]} · ratios " + \
                " / ".join(f"{r:g}" for r in ratios)
            sources.setdefault(label, payload)
    return sources


def _ranks_frame(payload: StabilityJson, key: str) -> pd.DataFrame:
    """Layers x ratios (largest ratio first) of one variant's ranks."""
    variants = {"ranks": payload["ranks"], "ranks_without_refinement": payload["ranks_without_refinement"]}
    ranks = pd.DataFrame(variants[key])
    return ranks[sorted(ranks.columns, key=float, reverse=True)]


def stability_table(payload: StabilityJson) -> pd.DataFrame:
    """Per layer: its rank at each ratio and the min-max spread, with and without refinement."""
    frames = []
    for variant, key in (("with refinement", "ranks"), ("without refinement", "ranks_without_refinement")):
        ranks = _ranks_frame(payload, key).rename(columns=lambda r: f"{float(r):.0%}")
        ranks.index.name = "layer"
        ranks["min"], ranks["max"] = ranks.min(axis=1), ranks.max(axis=1)
        ranks["spread"] = ranks["max"] - ranks["min"]
        frames.append(pd.concat({variant: ranks}, axis=1))
    return pd.concat(frames, axis=1)


def stability_summary(payload: StabilityJson) -> pd.DataFrame:
    """Mean spread and the smallest rank correlation between two ratios, per variant."""
    rows = []
    for variant, key in (("with refinement", "ranks"), ("without refinement", "ranks_without_refinement")):
        ranks = _ranks_frame(payload, key)
        corr = ranks.corr(method="spearman").to_numpy()
        off = corr[~np.eye(len(corr), dtype=bool)]
        rows.append({"variant": variant, "mean rank spread": float((ranks.max(1) - ranks.min(1)).mean()),
                     "max rank spread": int((ranks.max(1) - ranks.min(1)).max()),
                     "lowest Spearman between ratios": float(off.min()) if off.size else 1.0})
    return pd.DataFrame(rows)


def stability_figure(payload: StabilityJson) -> go.Figure:
    """Each layer's rank at each data ratio, a min-max band, with and without refinement
    side by side (the paper's Fig. 7)."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("with refinement", "without refinement"))
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for col, key in ((1, "ranks"), (2, "ranks_without_refinement")):
        ranks = _ranks_frame(payload, key)
        x = list(ranks.index)
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(ranks.max(1)) + list(ranks.min(1))[::-1],
                                 fill="toself", fillcolor="rgba(120,120,120,0.18)", line={"width": 0},
                                 hoverinfo="skip", name="min-max", showlegend=col == 1), row=1, col=col)
        for i, ratio in enumerate(ranks.columns):
            fig.add_trace(go.Scatter(x=x, y=ranks[ratio], mode="lines+markers",
                                     name=f"{float(ratio):.0%} data", legendgroup=ratio,
                                     showlegend=col == 1, line={"color": colours[i % len(colours)]},
                                     hovertemplate="layer %{x}: rank %{y}<extra>" + f"{float(ratio):.0%}</extra>"),
                          row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col, dtick=2 if len(x) > 16 else 1,
                         range=[-0.5, len(x) - 0.5])
    fig.update_yaxes(title_text="rank (1 = most important)", row=1, col=1)
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.2}, plot_bgcolor="white")
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    fig.update_yaxes(showgrid=True, gridcolor="#eee")
    return fig
