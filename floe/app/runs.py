"""The Runs page: the run table, and the live progress of background jobs."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from floe.app.common import describe, warmup_budget
from floe.store import jobs
from floe.store.artifacts import JobRecord, StateJson
from floe.store.runs import CorruptRunError, Run

__all__ = ["KIND_ORDER", "archive_bytes", "archive_name", "add_archive", "clean_up", "cleanup_preview",
           "format_record", "job_view", "kinds_of", "progress_of", "runs_table", "sort_runs", "status_of"]

# The Runs page's order of kinds: what answers "which layers?" first, the many cells of
# trainings and evaluations last.
KIND_ORDER = ("score", "probe", "compare", "study", "ranksearch", "train", "eval", "warmup")


def _when(state: StateJson) -> str:
    t = state.get("finished") or state.get("started") or state.get("updated")
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def kinds_of(runs: list[Run]) -> list[str]:
    """The kinds present, score runs first (KIND_ORDER), with the count of each: for the filter."""
    return sorted({r.kind for r in runs}, key=lambda k: (_kind_rank(k), k))


def sort_runs(runs: list[Run], kinds: list[str] | None = None) -> list[Run]:
    """The runs of ``kinds`` (None: all), score runs first, newest first within a kind."""
    picked = [r for r in runs if kinds is None or r.kind in kinds]
    return sorted(picked, key=lambda r: _kind_rank(r.kind))  # stable: list_runs is newest first


def _steps(run: Run) -> int | None:
    """A score run's warm-up steps (the budget behind its FLoE scores), else None."""
    if run.kind != "score":
        return None
    try:
        return warmup_budget(run)["steps"]
    except (CorruptRunError, OSError, KeyError, ValueError):
        return None


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what it is (with its sample size and, for a score run, its warm-up
    steps), its status and when."""
    rows = []
    for run in runs:
        state = _safe_state(run)
        rows.append({"run": run.id, "kind": run.kind, **describe(run), "warm-up steps": _steps(run),
                     "status": status_of(run), "date": _when(state or {}),
                     "error": (state or {}).get("error") or ""})
    columns = ["run", "kind", "model", "data", "samples", "warm-up steps", "ratio", "budget", "detail", "status",
               "date", "error"]
    return pd.DataFrame(rows, columns=columns)


def cleanup_preview(root: Path | None = None) -> pd.DataFrame:
    """What "Clean up" would delete: every failed, stale or corrupt run, and why; nothing is
    deleted here (floe runs gc --dry-run)."""
    from floe.store.runs import collect_garbage
    found = collect_garbage(root, dry_run=True)
    return pd.DataFrame([{"run": run_id, "why": why} for run_id, why in found], columns=["run", "why"])


def clean_up(run_ids: list[str], root: Path | None = None) -> list[str]:
    """Delete the previewed runs that are still garbage (a run resumed since the preview is
    kept); returns the ids deleted."""
    from floe.store.runs import GARBAGE, RunLockedError, cache_root, health
    folder = (root or cache_root()) / "runs"
    deleted = []
    for run_id in run_ids:
        run = Run(folder / run_id)
        if not run.path.is_dir() or health(run) not in GARBAGE:
            continue
        try:
            run.delete()
        except (RunLockedError, OSError):
            continue
        deleted.append(run_id)
    return deleted


def archive_name(run_ids: list[str]) -> str:
    """The download's file name: the run's id, or how many runs it holds."""
    return f"{run_ids[0] if len(run_ids) == 1 else f'{len(run_ids)}-runs'}.tar.gz"


def archive_bytes(run_ids: list[str], root: Path | None = None) -> bytes:
    """The finished runs ``run_ids`` and the runs they were computed from, packed for
    another machine (floe runs pack --with-inputs)."""
    import tempfile

    from floe.store.archive import pack_runs
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runs.tar.gz"
        pack_runs(run_ids, path, root, with_inputs=True)
        return path.read_bytes()


def add_archive(data: bytes, root: Path | None = None):
    """Unpack an uploaded archive into the cache (floe runs unpack: checked before anything
    is written); what became of each run."""
    import tempfile

    from floe.store.archive import unpack_runs
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.tar.gz"
        path.write_bytes(data)
        return unpack_runs(path, root)


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
