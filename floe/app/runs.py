"""The Runs page: the run table, and the live progress of background jobs."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from floe.app.common import describe
from floe.store import jobs
from floe.store.artifacts import JobRecord, StateJson
from floe.store.runs import CorruptRunError, Run

__all__ = ["format_record", "job_view", "progress_of", "runs_table", "status_of"]


def _when(state: StateJson) -> str:
    t = state.get("finished") or state.get("started") or state.get("updated")
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what it is, its status and when."""
    rows = []
    for run in runs:
        state = _safe_state(run)
        rows.append({"run": run.id, "kind": run.kind, **describe(run),
                     "status": status_of(run), "date": _when(state or {}),
                     "error": (state or {}).get("error") or ""})
    columns = ["run", "kind", "model", "data", "ratio", "budget", "detail", "status", "date", "error"]
    return pd.DataFrame(rows, columns=columns)


def status_of(run: Run) -> str:
    """The run's status, or ``corrupt`` when its state cannot be read (never raises: the
    Runs page is where such a run is deleted)."""
    try:
        return run.status
    except (CorruptRunError, OSError):
        return "corrupt"


def _safe_state(run: Run) -> StateJson | None:
    try:
        return run.state
    except CorruptRunError:
        return None


def _eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def format_record(record: dict) -> str:
    """One progress record as a log line."""
    when = time.strftime("%H:%M:%S", time.localtime(record.get("time", 0)))
    stage, event = record.get("stage", ""), record.get("event")
    if event == "step":
        text = f"step {record['step']}/{record['total_steps']}  loss {record.get('loss', float('nan')):.4f}"
    elif event == "progress":
        text = f"{record.get('done')}/{record.get('total') or '?'}"
    elif event == "start":
        resumed = record.get("resumed_from") or 0
        text = f"start, {record.get('total_steps')} steps" + (f" (resumed at {resumed})" if resumed else "")
    else:
        text = record.get("message", event or "")
    return f"{when}  {stage}: {text}"


def progress_of(records: list[dict]) -> dict:
    """The latest state of a progress log: fraction done (None if unknown), text, ETA."""
    if not records:
        return {"fraction": None, "text": "starting", "eta": ""}
    last = records[-1]
    stage = last.get("stage", "")
    if last.get("event") == "step":
        return {"fraction": min(1.0, last["step"] / max(1, last["total_steps"])),
                "text": f"{stage}: step {last['step']} of {last['total_steps']}, loss {last['loss']:.3f}",
                "eta": _eta(last.get("eta"))}
    if last.get("event") == "progress" and last.get("total"):
        done, total = last["done"], last["total"]
        began = next((r["time"] for r in reversed(records) if r.get("stage") == stage
                      and r.get("event") == "stage"), records[0].get("time"))
        rate = (last["time"] - began) / max(done, 1)
        return {"fraction": min(1.0, done / total), "text": f"{stage}: {done} of {total}",
                "eta": _eta(rate * (total - done)) if done else ""}
    return {"fraction": None, "text": format_record(last).split("  ", 1)[1], "eta": ""}


def job_view(job: JobRecord, root: Path | None = None) -> dict:
    """What the job panel shows: status, progress, ETA, last lines, error, result run."""
    view: dict[str, Any] = {
        "id": job["id"], "label": job["label"], "status": job["status"],
        "command": jobs.display_command(job["args"]) if job.get("args") else " ".join(job["command"]),
        "fraction": None, "text": "", "eta": "", "lines": [], "error": job.get("error"),
        "run": (job.get("result") or {}).get("run"), "devices": ", ".join(job.get("devices", [])),
        "command_name": (job.get("args") or [""])[0]}
    if job["status"] == jobs.QUEUED:
        view["text"] = "waiting for the device"
    elif job["status"] == jobs.RUNNING:
        held = jobs.held_runs(job, root)
        if held:
            records = held[0].progress()
            view.update(progress_of(records), current_run=held[0].id)
            view["lines"] = [format_record(r) for r in records[-4:]]
        else:
            view["text"] = "loading the model and data"
        view["lines"] += jobs.log_tail(job, root, 3)
    elif job["status"] == jobs.DONE:
        view.update(fraction=1.0, text="finished")
    return view
