"""Rank search (METHOD 9): Optuna TPE over the adapter rank r of a sparse HydraLoRA.

Each trial trains the chosen layers at a suggested r (``floe.pipeline.sparse``, itself a cached run,
so a rank TPE suggests twice is trained once) and returns the held-out loss. Intermediate
held-out losses are reported to the trial so the median pruner can stop hopeless ranks.
The study lives in an Optuna storage: ``study.db`` (SQLite) in the run folder, or any RDB
URL shared by several workers. ``n_trials`` counts finished trials over all sessions and
workers, so a killed search, started again, only runs what is missing.

A rank some trial already trained, in any worker's cache, is not trained again: its result
is copied (``reused_trial`` says from which trial), after waiting for a lower-numbered trial
that is training it. Shared (``storage``): a worker that has run its share waits until no
trial runs and ``n_trials`` have finished (a dead worker's trial is failed once stale and run
again), then writes search.json from the study: the same file on every worker.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

from floe.experiments.shared import WORKER, poll_seconds, revive_stale, worker_id
from floe.pipeline.setup import Setup
from floe.pipeline.sparse import (
    RunStoppedError,
    SparseConfig,
    prepare_sparse,
    run_sparse_training,
    summary_of,
    train_key,
)
from floe.store import artifacts
from floe.store.artifacts import SearchJson
from floe.store.config import option, to_dict
from floe.store.runs import Run, run_for
from floe.store.storage import open_storage, redact

__all__ = ["STUDY_DB", "SUMMARY", "RankSearchConfig", "best_rank", "eval_steps", "fail_stale_trials",
           "make_objective", "run_rank_search", "search_key", "summarize"]

SUMMARY = artifacts.SEARCH
STUDY_DB = "study.db"


@dataclass
class RankSearchConfig:
    """The rank search: range, trials, sampler seed, pruning, storage."""

    r_min: int = option(2, "smallest rank to try")
    r_max: int = option(16, "largest rank to try")
    n_trials: int = option(20, "finished trials wanted in the study (over all sessions and workers)")
    sampler_seed: int = option(42, "seed of the TPE sampler")
    startup_trials: int = option(5, "random trials before TPE models the objective")
    prune: bool = option(True, "stop hopeless trials early (median pruner on intermediate losses)")
    prune_startup_trials: int = option(2, "trials that run to the end before pruning starts")
    evals_per_trial: int = option(4, "held-out evaluations reported to the pruner per trial")
    storage: str | None = option(None, "Optuna storage URL shared by workers (e.g. "
                                 "postgresql://..., sqlite:////path/study.db); default: "
                                 "study.db in the run folder")
    study_name: str | None = option(None, "study name in the storage (default: the run id)")

    def __post_init__(self):
        if not 1 <= self.r_min <= self.r_max:
            raise ValueError(f"rank range [{self.r_min}, {self.r_max}] is invalid: need "
                             "1 <= r_min <= r_max")
        if self.n_trials < 1 or self.evals_per_trial < 0:
            raise ValueError("n_trials must be >= 1 and evals_per_trial >= 0")


def search_key(setup: Setup, sparse: SparseConfig, search: RankSearchConfig) -> dict:
    """What defines the study (not n_trials: more trials extend it; not the storage)."""
    key = train_key(setup, sparse)
    del key["adapter"]["r"]  # searched
    space = {k: v for k, v in to_dict(search).items() if k not in ("n_trials", "storage", "study_name")}
    return {**key, "search": space}


def fail_stale_trials(study) -> list[dict]:
    """Trials left RUNNING by a killed process that held this run's lock: mark them failed and
    queue their rank again, so the search resumes where it stopped (the trial's training
    run resumes from its checkpoint)."""
    from optuna.trial import TrialState
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params)
    return [t.params for t in stale]


def _reporter(trial, n_evals: int):
    """Report held-out losses at evenly spaced steps; stop the trial if the pruner says so."""
    import optuna
    losses = []

    def on_record(record: dict, validate) -> None:
        if record.get("event") != "step":
            return
        losses.append(record["loss"])
        trial.set_user_attr("train_losses", losses)
        if record["step"] not in eval_steps(record["total_steps"], n_evals):
            return
        value = validate()
        if value is None:  # no held-out data: the training loss is the signal
            value = record["loss"]
        trial.report(value, record["step"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {record['step']} (loss {value:.4f})")
    return on_record


def eval_steps(steps: int, n_evals: int) -> set[int]:
    if n_evals <= 0:
        return set()
    # Evenly spaced, excluding the last step: the final loss is the objective itself.
    return {max(1, round(steps * i / (n_evals + 1))) for i in range(1, n_evals + 1)} - {steps}


def make_objective(setup: Setup, sparse: SparseConfig, search: RankSearchConfig):
    import optuna
    n_evals = search.evals_per_trial if search.prune else 0

    def objective(trial) -> float:
        r = trial.suggest_int("r", search.r_min, search.r_max)
        trial.set_user_attr(WORKER, worker_id())
        twin = _finished_twin(trial.study, trial.number, r)
        if twin is not None:  # trained already, maybe by another worker: its result, not a retraining
            for name, value in {**twin.user_attrs, WORKER: worker_id(), "reused_trial": twin.number}.items():
                trial.set_user_attr(name, value)
            return twin.value
        start = time.time()
        try:
            run = run_sparse_training(setup.replace(adapter=dataclasses.replace(setup.adapter, r=r)),
                                      sparse, show_progress=False, wait_if_locked=True,
                                      on_record=_reporter(trial, n_evals))
        except RunStoppedError as e:  # another worker's trial of this rank was pruned or died
            raise optuna.TrialPruned(str(e)) from None
        summary = summary_of(run)
        for name, value in {"layers": summary["layers"], "r": r, "train_run": run.id,
                            "trainable_parameters": summary["trainable_parameters"],
                            "peak_memory_bytes": summary["peak_memory_bytes"],
                            "peak_memory_source": summary["peak_memory_source"],
                            "train_seconds": summary["seconds"],
                            "wall_time_s": time.time() - start}.items():
            trial.set_user_attr(name, value)
        if summary["val_loss_after"] is None:
            raise ValueError("the rank search needs validation data: set val_samples >= 1")
        return summary["val_loss_after"]
    return objective


def _finished_twin(study, number: int, r: int):
    """A complete trial of rank ``r`` that trained it (after waiting for a lower-numbered
    running trial of ``r``, e.g. on another worker, or one that has not drawn its rank yet),
    or None."""
    from optuna.trial import TrialState
    while True:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != number]
        done = [t for t in trials if t.params.get("r") == r and t.state == TrialState.COMPLETE
                and "train_run" in t.user_attrs]
        if done:
            return min(done, key=lambda t: t.number)
        if not any(t.state == TrialState.RUNNING and t.number < number and t.params.get("r", r) == r
                   for t in trials):
            return None
        time.sleep(poll_seconds())
        revive_stale(study)  # a dead worker's trial stops the wait once stale


def _settle(study, search: RankSearchConfig, objective, callbacks) -> None:
    """Shared: run trials while fewer than ``n_trials`` are finished or running, then wait
    until none runs, so every worker summarizes the same study."""
    from optuna.trial import TrialState
    while True:
        revive_stale(study)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        finished = _finished(study)
        if finished >= search.n_trials and not running:
            return
        if finished + running < search.n_trials:
            study.optimize(objective, n_trials=1, callbacks=callbacks, gc_after_trial=True)
        else:
            time.sleep(poll_seconds())


def _finished(study) -> int:
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))



def summarize(study, storage_url: str) -> SearchJson:
    from optuna.trial import TrialState
    trials = [{"number": t.number, "state": t.state.name, "r": t.params.get("r"), "value": t.value,
               "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
               **{k: v for k, v in t.user_attrs.items()}}
              for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = min(complete, key=lambda t: t.value) if complete else None
    return {"study_name": study.study_name, "storage": redact(storage_url),
            "best_r": best.params["r"] if best else None, "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "n_complete": len(complete), "n_finished": _finished(study), "trials": trials}


def run_rank_search(setup: Setup, sparse: SparseConfig, search: RankSearchConfig,
                    force: bool = False, show_progress: bool = True) -> Run:
    """Run (or resume, or extend) the rank search; returns its run with ``search.json``."""
    import optuna
    from optuna.samplers import TPESampler
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    # Bad layers or a rank range the model cannot take fail before any trial.
    setup = setup.replace(adapter=prepare_sparse(setup.model, dataclasses.replace(setup.adapter, r=search.r_max),
                                                 sparse))
    shared = open_storage(search.storage) if search.storage else None  # a bad URL: no run folder left
    run = run_for("ranksearch", search_key(setup, sparse, search))
    local = search.storage is None
    url = search.storage or f"sqlite:///{run.file(STUDY_DB)}"
    name = search.study_name or run.id
    if force and local:
        run.clear_corrupt()
    # Several workers share a study through --storage; only a local study is exclusive.
    with (run.hold() if local else contextlib.nullcontext(run)):
        if force and local:  # a fresh study; the trials' training runs stay cached
            run.file(STUDY_DB).unlink(missing_ok=True)
        storage = shared or open_storage(url)
        study = optuna.create_study(
            study_name=name, storage=storage, direction="minimize", load_if_exists=True,
            sampler=TPESampler(seed=search.sampler_seed, n_startup_trials=search.startup_trials),
            pruner=(optuna.pruners.MedianPruner(n_startup_trials=search.prune_startup_trials)
                    if search.prune else optuna.pruners.NopPruner()))
        if local:
            requeued = fail_stale_trials(study)
            if requeued:
                run.log(event="stage", stage="search", message=f"resumed: retrying {requeued}")
        todo = search.n_trials - _finished(study)
        run.log(event="start", stage="search", total_steps=search.n_trials,
                resumed_from=_finished(study))
        objective = make_objective(setup, sparse, search)
        if not local:
            _settle(study, search, objective, [_progress(run, search.n_trials)])
        elif todo > 0:
            study.optimize(objective, n_trials=todo,
                           callbacks=[MaxTrialsCallback(search.n_trials,
                                                        states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                      _progress(run, search.n_trials)],
                           show_progress_bar=show_progress, gc_after_trial=True)
        summary = summarize(study, url)
        run.write_json(SUMMARY, {**summary, "n_trials": search.n_trials})
        if summary["n_finished"] >= search.n_trials:
            run.finish([SUMMARY])
    return run


def _progress(run: Run, n_trials: int):
    def callback(study, trial) -> None:
        run.log(event="progress", stage="search", done=_finished(study), total=n_trials,
                trial=trial.number, state=trial.state.name, r=trial.params.get("r"), value=trial.value)
    return callback


def best_rank(run: Run) -> int | None:
    return run.read_json(SUMMARY)["best_r"]
