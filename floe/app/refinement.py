"""The Refinement page: rankings with and without the swap refinement (Fig. 6), and which k
need an evaluation to tell them apart (the evaluation itself: the Compare page)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from floe.app.common import finished, skip_corrupt
from floe.experiments.study import ranks_of
from floe.store.artifacts import LayersJson
from floe.store.runs import Run

__all__ = ["compare_runs", "differing_ks", "refinement_figure", "refinement_moves", "refinement_summary"]


def differing_ks(with_refinement: list[int], without: list[int]) -> list[int]:
    """The k whose top-k layer sets differ between two rankings: only these need an
    evaluation to compare the rankings (the paper's Fig. 6 / Table 7)."""
    return [k for k in range(1, len(with_refinement) + 1)
            if set(with_refinement[:k]) != set(without[:k])]


def refinement_summary(payload: LayersJson) -> str | None:
    """What the refinement did to the greedy masks under per-unit costs, in one sentence
    (None for score runs of floe 0.2.0, which did not record it)."""
    r = payload.get("refinement") or {}
    if "greedy_cost_ratio" not in r:
        return None
    fill = f", then the fill step added back {r['filled']:,}" if r.get("fill") else ""
    return (f"Under per-unit costs the greedy masks cost {r['greedy_cost_ratio']:.2f}·C: "
            f"fitting them to the budget masked {r['dropped_to_fit']:,} units, then {r['swaps']:,} "
            f"swap(s) followed{fill}. The masked units' Fisher loss: greedy {r['greedy_loss']:.4g}, "
            f"after fitting {r['fit_loss']:.4g}, refined {r['refined_loss']:.4g}; the refined "
            f"masks use {r['refined_cost_ratio']:.1%} of C.")


def refinement_moves(payload: LayersJson) -> pd.DataFrame:
    """Per layer: rank without and with refinement, and how far it moved (+ = up)."""
    before = ranks_of(payload["ranking_without_refinement"])
    after = ranks_of(payload["ranking"])
    df = pd.DataFrame({"layer": range(payload["n_layers"]), "rank without refinement": before,
                       "rank with refinement": after})
    df["moved up by"] = df["rank without refinement"] - df["rank with refinement"]
    df["score without"] = payload["layer_scores_without_refinement"]
    df["score with"] = payload["layer_scores"]
    return df.sort_values("rank with refinement").reset_index(drop=True)


def refinement_figure(payload: LayersJson) -> go.Figure:
    """Both rankings as columns, a line per layer from its rank without refinement to its
    rank with it; layers that move are coloured (the paper's Fig. 6)."""
    moves = refinement_moves(payload)
    fig = go.Figure()
    for layer, before, after, up in zip(moves["layer"], moves["rank without refinement"],
                                        moves["rank with refinement"], moves["moved up by"]):
        colour = "#2ca02c" if up > 0 else "#d62728" if up < 0 else "#c7c7c7"
        fig.add_trace(go.Scatter(
            x=["without refinement", "with refinement"], y=[before, after],
            mode="lines+markers+text", text=[f"L{layer}", f"L{layer}"],
            textposition=["middle left", "middle right"], line={"color": colour, "width": 3 if up else 1},
            marker={"size": 7, "color": colour}, showlegend=False,
            hovertemplate=f"layer {layer}: rank %{{y}}<extra>%{{x}}</extra>"))
    fig.update_layout(height=max(360, 18 * payload["n_layers"] + 80),
                      margin={"l": 60, "r": 60, "t": 30, "b": 30}, plot_bgcolor="white",
                      yaxis={"range": [payload["n_layers"] + 0.5, 0.5], "title": "rank (1 = most important)",
                             "dtick": 1 if payload["n_layers"] <= 40 else 4})
    return fig


def compare_runs(score_run: Run, root: Path | None = None) -> list[Run]:
    """Finished ``floe compare`` runs made from this score run, newest first."""
    out = []
    for run in finished("compare", root):
        with skip_corrupt():
            if run.config.get("score_run") == score_run.id:
                out.append(run)
    return out
