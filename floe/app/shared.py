"""The Runs page's view of a probe or compare shared by workers through an Optuna storage
(``--storage URL --study-name NAME``): each cell's state and the worker (``host:pid``) that
holds or computed it, read live from the storage.

The run records its storage with the password redacted (probe.json, compare.json), so the
page asks for the URL: it is used for one read and never written anywhere. No Streamlit here.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from floe.store.artifacts import COMPARE, PROBE
from floe.store.runs import CorruptRunError, Run
from floe.store.storage import redact

__all__ = ["COLUMNS", "STORAGE_ENV", "counts", "default_url", "per_worker", "placeholder", "progress_table",
           "read_progress", "shared_record", "shared_runs", "worker_figure"]

STORAGE_ENV = "FLOE_STORAGE"
COLUMNS = ["cell", "label", "state", "worker", "trials"]
_SUMMARIES = {"probe": PROBE, "compare": COMPARE}
_WAITING = ("queued", "open")  # queued: a retry waits for a worker; open: not drawn yet


def shared_record(run: Run) -> dict | None:
    """``{storage, study}`` of a probe or compare run shared through a storage (the URL as
    the run records it, password redacted); None for a run not shared, or one with no
    summary yet (a shared run writes it after its first cell)."""
    name = _SUMMARIES.get(run.kind)
    if name is None or not run.file(name).exists():
        return None
    try:
        summary = run.read_json(name)
    except (CorruptRunError, OSError):
        return None
    config = summary.get("config") or {}
    config = config.get("probe") or {} if run.kind == "probe" else config
    storage = summary.get("storage") if run.kind == "probe" else config.get("storage")
    if not storage:
        return None
    return {"storage": storage, "study": config.get("study_name") or run.id}  # the default name: the run id


def shared_runs(runs: list[Run]) -> dict[str, dict]:
    """The shared runs among ``runs``: run id -> shared_record."""
    found = {run.id: shared_record(run) for run in runs if run.kind in _SUMMARIES}
    return {run_id: record for run_id, record in found.items() if record is not None}


def default_url(recorded: str, env: Mapping[str, str] | None = None) -> str | None:
    """The URL used when the field is left empty: $FLOE_STORAGE, else the recorded URL when
    redaction took nothing out of it (no password), else None (the user types it)."""
    given = (os.environ if env is None else env).get(STORAGE_ENV)
    if given:
        return given
    return None if ":***@" in recorded else recorded


def placeholder(default: str | None) -> str:
    """What the empty URL field shows: the URL it stands for, password redacted."""
    return f"empty: {redact(default)}" if default else "postgresql://user:PASSWORD@host/db"


def read_progress(url: str, study: str) -> list[dict] | str:
    """Each cell's progress (floe.experiments.shared.shared_progress), or one line saying
    why the storage cannot be read (the password never in it)."""
    from floe.experiments.shared import shared_progress
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return f"no SQLite database at {url.removeprefix('sqlite:///')}"  # opening it would create one
    try:
        rows = shared_progress(url, study)
    except ValueError as e:
        return str(e).replace(url, redact(url))
    return rows if rows else f"study {study!r} in {redact(url)} has no cells of a floe grid"


def progress_table(rows: list[dict]) -> pd.DataFrame:
    """One row per cell: its label, state (done, running, queued, open), worker and trials."""
    return pd.DataFrame([{c: row.get(c) for c in COLUMNS} for row in rows], columns=COLUMNS)


def counts(rows: list[dict]) -> dict[str, int]:
    """Cells done, running, and waiting (queued again or not drawn yet)."""
    states = [row["state"] for row in rows]
    return {"done": states.count("done"), "running": states.count("running"),
            "waiting": sum(s in _WAITING for s in states)}


def per_worker(rows: list[dict]) -> pd.DataFrame:
    """Per worker: cells done and running, most done first."""
    table = pd.DataFrame([r for r in rows if r["state"] in ("done", "running") and r.get("worker")],
                         columns=["worker", "state"])
    out = pd.crosstab(table["worker"], table["state"]).reindex(columns=["done", "running"], fill_value=0)
    out = out.reset_index().rename_axis(columns=None)
    return out.sort_values(["done", "running", "worker"], ascending=[False, False, True], ignore_index=True)


def worker_figure(rows: list[dict]) -> go.Figure:
    """Cells per worker: done and running, stacked."""
    table = per_worker(rows)
    fig = go.Figure([go.Bar(x=table["worker"], y=table[state], name=state,
                            hovertemplate=f"%{{x}}: %{{y}} {state}<extra></extra>")
                     for state in ("done", "running")])
    fig.update_layout(barmode="stack", height=260, margin={"t": 30, "b": 10},
                      xaxis_title="worker (host:pid)", yaxis_title="cells", yaxis={"dtick": 1})
    return fig
