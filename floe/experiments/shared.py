"""A grid of cells shared by workers, on one machine or many, through an Optuna RDB study.

An experiment made of independent cells (a probe's (layer, seed) trainings, a compare's
base evaluation and (k, policy, seed) trainings) is one Optuna study with a GridSampler over
the cell indices. The database hands out trial numbers, and GridSampler gives each of the
first n trials its own cell, so no two workers draw the same one. A finished trial holds the
cell's result as its user attr ``result`` (one JSON value) and who computed it (``host:pid``)
as ``worker``. Results are read back from the storage alone: every worker, and a process
that computes nothing, assembles the same summary, whatever its own cache holds.

Failures. A worker killed mid-cell stops its trial's heartbeat; once the trial is stale
(floe.store.storage) the next worker that looks fails it, and Optuna's
RetryHeartbeatStaleTrialCallback queues a copy of it with the same grid id: the same cell,
taken by the first free worker. A cell whose trials all ended without a result (an error,
Ctrl-C, retries used up) is queued again, as a copy with its grid id (a trial queued by its
parameters alone breaks GridSampler once one grid point is left: KeyError 'grid_id' in
after_trial, Optuna 5.0). A second live trial of a cell (GridSampler's fallback once the
grid is exhausted, or two workers queueing the same cell) is pruned before it computes: the
lowest-numbered live trial of a cell computes it, and a cell that has a result is never
computed again.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

from floe.pipeline.sparse import ADAPTER_DIR
from floe.store.runs import Run
from floe.store.storage import heartbeat_seconds, open_storage, redact

__all__ = ["CELLS", "PARAM", "RESULT", "WORKER", "adapter_checksum", "cell_of", "open_grid", "poll_seconds",
           "progress_of", "results_of", "revive_stale", "share_cells", "shared_progress", "taken_by", "worker_id"]

PARAM, RESULT, WORKER, CELLS = "cell", "result", "worker", "cells"
Result = dict[str, Any]


def worker_id() -> str:
    """Who computes a cell: host and process, as the storage records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def poll_seconds() -> float:
    """How often a waiting worker looks at the study: several times per heartbeat, so the
    end of another worker's cell is seen soon (two small queries a look)."""
    return max(1.0, heartbeat_seconds() / 6)


def adapter_checksum(run: Run) -> str | None:
    """sha256 of a finished training run's adapter weights (from its manifest): a copy
    fetched from the worker that trained it can be checked against it."""
    return run.state.get("manifest", {}).get(f"{ADAPTER_DIR}/adapter_model.safetensors")


# --------------------------------------------------------------------------- the study
def open_grid(storage, study_name: str, labels: list[str]):
    """The study of a grid of ``labels`` (what each cell is), created by whichever worker
    comes first; a study of another grid under that name is refused."""
    import optuna
    from optuna.samplers import GridSampler
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                sampler=GridSampler({PARAM: list(range(len(labels)))}, seed=0),
                                load_if_exists=True)
    known = study.user_attrs.get(CELLS)
    if known is None:
        study.set_user_attr(CELLS, labels)  # two first workers write the same value
    elif known != labels:
        raise ValueError(f"study {study_name!r} shares another grid ({len(known)} cells: "
                         f"{', '.join(known[:3])}{', ...' if len(known) > 3 else ''}); give this "
                         "experiment its own --study-name")
    return study


def revive_stale(study) -> None:
    """Fail the trials of dead workers (no heartbeat within the grace period) and queue
    their cells again (the storage's RetryHeartbeatStaleTrialCallback)."""
    import optuna
    with warnings.catch_warnings():  # marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def cell_of(trial) -> int | None:
    """The cell a trial computes (None for a trial that has not drawn yet)."""
    return trial.params.get(PARAM)


def results_of(trials, n: int) -> list[Result | None]:
    """Each cell's recorded result (None: not computed yet), from the finished trials."""
    from optuna.trial import TrialState
    out: list[Result | None] = [None] * n
    for t in sorted(trials, key=lambda t: t.number):  # the first result of a cell wins
        cell = cell_of(t)
        if t.state == TrialState.COMPLETE and RESULT in t.user_attrs and cell is not None and out[cell] is None:
            out[cell] = t.user_attrs[RESULT]
    return out


def taken_by(trials, number: int, cell: int) -> str | None:
    """Why trial ``number`` (one of ``trials``) must not compute ``cell``: it has a result, or
    a lower-numbered live trial holds it (None: this trial computes it). The grid id
    (GridSampler's, set before a trial runs) also recognises a trial of the cell that has
    not drawn it yet."""
    from optuna.trial import TrialState
    grid_id = next((t.system_attrs.get("grid_id") for t in trials if t.number == number), None)
    for t in trials:
        same = cell_of(t) == cell or (grid_id is not None and t.system_attrs.get("grid_id") == grid_id)
        if t.number == number or not same:
            continue
        if t.state == TrialState.COMPLETE and RESULT in t.user_attrs:
            return f"done by trial {t.number} ({t.user_attrs.get(WORKER)})"
        if t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < number:
            return f"held by trial {t.number}"
    return None


def _objective(study, n: int, compute: Callable[[int], Result]):
    import optuna

    def objective(trial) -> float:
        cell = trial.suggest_categorical(PARAM, list(range(n)))
        trial.set_user_attr(WORKER, worker_id())
        taken = taken_by(study.get_trials(deepcopy=False), trial.number, cell)
        if taken is not None:
            raise optuna.TrialPruned(f"cell {cell} is {taken}")
        trial.set_user_attr(RESULT, compute(cell))
        return 0.0  # a grid has no objective: the result is the attr
    return objective


def _undrawn(trials, n: int) -> bool:
    """Whether a cell has no trial yet: a new trial draws one (GridSampler takes grid points
    no trial has visited). Counting trials would not do: a retry popped in place of a new
    trial keeps its own grid point, and the one of its trial number is left to a later one."""
    return len({cell_of(t) for t in trials} - {None}) < n


def _orphans(trials) -> dict:
    """The cells whose trials all ended without a result: cell -> its latest trial."""
    from optuna.trial import TrialState
    if any(t.state == TrialState.WAITING or (t.state == TrialState.RUNNING and cell_of(t) is None)
           for t in trials):
        return {}  # queued work first; or a trial between its creation and its draw: look again
    held = {cell_of(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)}
    return {cell_of(t): t for t in sorted(trials, key=lambda t: t.number)
            if cell_of(t) is not None and cell_of(t) not in held}


def _requeue(study, trial) -> None:
    """A waiting copy of ``trial`` with its grid id, as Optuna's heartbeat retry makes one
    (GridSampler needs the grid id: a trial queued by its parameters alone breaks it)."""
    import optuna
    grid = {k: trial.system_attrs[k] for k in ("grid_id", "search_space") if k in trial.system_attrs}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, system_attrs=grid))


def share_cells(storage, study_name: str, labels: list[str], compute: Callable[[int], Result],
                on_result: Callable[[list[Result | None]], None] | None = None) -> list[Result]:
    """Compute cells of the shared grid until every cell has a result (waiting for other
    workers' cells); each cell's result, in cell order. ``compute(i)`` returns cell i's
    result (JSON values); ``on_result`` sees the results so far after each trial run here."""
    from optuna.trial import TrialState
    study = open_grid(storage, study_name, labels)
    n, poll_s = len(labels), poll_seconds()
    objective = _objective(study, n, compute)
    suspects: set[int] = set()
    while True:
        revive_stale(study)
        trials = study.get_trials(deepcopy=False)
        results = results_of(trials, n)
        if all(r is not None for r in results):
            return [r for r in results if r is not None]
        # An orphan seen twice in a row: a stale trial's retry is queued right after it
        # fails, so one look could take a retry about to be queued for an orphan.
        orphans = _orphans(trials)
        for cell in orphans.keys() & suspects:
            _requeue(study, orphans[cell])
        requeued, suspects = orphans.keys() & suspects, set(orphans)
        if not (requeued or _undrawn(trials, n) or any(t.state == TrialState.WAITING for t in trials)):
            time.sleep(poll_s)  # every open cell is held by a live worker (or just lost its own)
            continue
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=True)
        except ValueError as e:
            # Our trial was failed as stale while it computed (its heartbeats were starved):
            # its retry computes the cell again, from this worker's cache if it takes it.
            if not str(e).startswith("Cannot tell a"):
                raise
        if on_result is not None:
            on_result(results_of(study.get_trials(deepcopy=False), n))


# --------------------------------------------------------------------------- progress
def progress_of(trials, labels: list[str]) -> list[dict]:
    """Per cell: its label, state (done, running, queued, open: not drawn or to be queued
    again) and the worker of its latest trial that counts (the one that computed it)."""
    from optuna.trial import TrialState
    rank = {TrialState.COMPLETE: 0, TrialState.RUNNING: 1, TrialState.WAITING: 2}
    names = {TrialState.COMPLETE: "done", TrialState.RUNNING: "running", TrialState.WAITING: "queued"}
    out = []
    for cell, label in enumerate(labels):
        mine = [t for t in trials if cell_of(t) == cell and t.state in rank
                and (t.state != TrialState.COMPLETE or RESULT in t.user_attrs)]
        best = min(mine, key=lambda t: (rank[t.state], t.number), default=None)
        out.append({"cell": cell, "label": label, "state": names[best.state] if best else "open",
                    "worker": best.user_attrs.get(WORKER) if best else None,
                    "trials": sum(cell_of(t) == cell for t in trials)})
    return out


def shared_progress(storage_url: str, study_name: str) -> list[dict]:
    """The progress of a shared grid, read from its storage (progress_of)."""
    import optuna
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {redact(storage_url)}") from None
    return progress_of(study.get_trials(deepcopy=False), study.user_attrs.get(CELLS, []))
