"""The Rank search page: Optuna's history, loss against r, the best r."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from floe.app.common import run_json
from floe.experiments.ranksearch import SUMMARY as SEARCH
from floe.store.artifacts import SearchJson
from floe.store.runs import DONE, Run, list_runs

__all__ = ["TRIAL_COLUMNS", "rank_searches", "search_figures", "search_summary", "search_trials"]


def rank_searches(root: Path | None = None) -> list[Run]:
    """Rank-search runs of any status (a running one shows its trials so far)."""
    return [r for r in list_runs(root) if r.kind == "ranksearch"]


def search_summary(run: Run) -> SearchJson | None:
    """search.json of a finished search; for one in progress, the same summary read live
    from its Optuna study (floe.experiments.ranksearch.summarize). None before the first trial."""
    if run.status == DONE:
        return run_json(run, SEARCH)
    db = run.file("study.db")
    if db.exists():
        import optuna

        from floe.experiments.ranksearch import summarize
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = f"sqlite:///{db}"
        names = optuna.get_all_study_names(url)
        if names:
            return summarize(optuna.load_study(study_name=names[0], storage=url), url)
    return run.read_json(SEARCH) if run.file(SEARCH).exists() else None


TRIAL_COLUMNS = ["number", "state", "r", "value", "trainable_parameters", "train_seconds", "train_run"]


def search_trials(run: Run) -> tuple[pd.DataFrame, SearchJson] | tuple[None, None]:
    """The trials of a rank search as a table, and its summary (best r, counts)."""
    summary = search_summary(run)
    if not summary or not summary.get("trials"):
        return None, None
    df = pd.DataFrame([{k: t.get(k) for k in TRIAL_COLUMNS} for t in summary["trials"]], columns=TRIAL_COLUMNS)
    df["train_seconds"] = pd.to_numeric(df["train_seconds"], errors="coerce").round(1)  # tenths, not 1e-4 s
    return df, summary


def search_figures(trials: pd.DataFrame, best_r: int | None) -> tuple[go.Figure, go.Figure]:
    """Optimisation history (loss per trial, best so far) and the slice of loss against r."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    history = go.Figure()
    history.add_trace(go.Scatter(x=done["number"], y=done["value"], mode="markers", name="trial",
                                 customdata=done["r"], marker={"size": 9},
                                 hovertemplate="trial %{x}: r=%{customdata}, loss %{y:.4f}<extra></extra>"))
    history.add_trace(go.Scatter(x=done["number"], y=done["value"].cummin(), mode="lines",
                                 name="best so far", line={"shape": "hv"}))
    pruned = trials[trials["state"] == "PRUNED"]
    if len(pruned):
        history.add_trace(go.Scatter(x=pruned["number"], y=[done["value"].max()] * len(pruned)
                                     if len(done) else [0] * len(pruned), mode="markers",
                                     name="pruned", marker={"symbol": "x", "color": "#999"},
                                     customdata=pruned["r"], hovertemplate="trial %{x}: r=%{customdata}, "
                                     "pruned<extra></extra>"))
    history.update_layout(height=330, margin={"l": 10, "r": 10, "t": 30, "b": 40},
                          xaxis_title="trial", yaxis_title="validation loss", title="optimisation history",
                          legend={"orientation": "h", "y": -0.25})
    sl = go.Figure(go.Scatter(x=done["r"], y=done["value"], mode="markers", customdata=done["number"],
                              marker={"size": 10, "color": done["number"], "colorscale": "Viridis",
                                      "showscale": True, "colorbar": {"title": {"text": "trial"}}},
                              hovertemplate="r=%{x}: loss %{y:.4f} (trial %{customdata})<extra></extra>"))
    if best_r is not None and len(done):
        sl.add_vline(x=best_r, line_dash="dash", line_color="#d62728",
                     annotation_text=f"best r = {best_r}")
    sl.update_layout(height=330, margin={"l": 10, "r": 10, "t": 30, "b": 40},
                     xaxis_title="rank r", yaxis_title="validation loss", title="slice: loss against r")
    return history, sl
