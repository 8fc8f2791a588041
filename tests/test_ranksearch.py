"""floe search-rank: Optuna TPE over r, on a storage, resumable, pruned, seeded."""
import json

import optuna
import pytest
from helpers import tiny_configs
from optuna.trial import TrialState

from floe.cli import main
from floe.experiments.ranksearch import STUDY_DB, SUMMARY, RankSearchConfig, run_rank_search
from floe.pipeline.sparse import SparseConfig
from floe.store.runs import list_runs, open_run

SEARCH = ["--layers", "1,3", "--r-min", "2", "--r-max", "8", "--lr", "1e-2"]


def _search(model_dir, data_file, train=None, **kw):
    return run_rank_search(tiny_configs(model_dir, data_file, **(train or {})), SparseConfig(layers=[1, 3]),
                           RankSearchConfig(**{"r_min": 2, "r_max": 8, **kw}), show_progress=False)


def test_search_records_trials_and_picks_the_lowest_loss(tiny_args, capsys):
    code = main(["search-rank", *tiny_args, *SEARCH, "--n-trials", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    run = open_run(out["run"])
    assert run.file(STUDY_DB).is_file() and out["storage"].startswith("sqlite:///")
    trials = [t for t in out["trials"] if t["state"] == "COMPLETE"]
    assert out["n_finished"] == 3 and len(trials) >= 1
    for t in trials:
        assert 2 <= t["r"] <= 8 and t["layers"] == [1, 3]
        assert t["trainable_parameters"] > 0 and t["peak_memory_bytes"] > 0 and t["wall_time_s"] > 0
        # The objective is the held-out loss of the trial's own training run.
        assert t["value"] == open_run(t["train_run"]).read_json("train.json")["val_loss_after"]
    # Losses were reported to the pruner during training (a rank TPE repeats reuses the
    # finished training run of its first trial: nothing to report then).
    first_of_each_r = {t["r"]: t for t in reversed(trials)}.values()
    assert all(len(t["intermediate"]) >= 1 for t in first_of_each_r)
    best = min(trials, key=lambda t: t["value"])
    assert out["best_r"] == best["r"] and out["best_value"] == best["value"]
    # Trainable parameters grow with the rank.
    by_r = {t["r"]: t["trainable_parameters"] for t in trials}
    assert [by_r[r] for r in sorted(by_r)] == sorted(by_r.values())


def test_more_trials_extend_the_study_and_a_killed_trial_is_retried(tiny_model_dir, qa_file):
    run = _search(tiny_model_dir, qa_file, n_trials=1, sampler_seed=3)
    study = optuna.load_study(study_name=run.id, storage=f"sqlite:///{run.file(STUDY_DB)}")
    # A worker killed mid-trial leaves a RUNNING trial behind.
    orphan = study.ask({"r": optuna.distributions.IntDistribution(2, 8)})
    run = _search(tiny_model_dir, qa_file, n_trials=2, sampler_seed=3)
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2  # n_trials counts finished trials over both sessions
    # The killed trial's rank was queued again and run.
    assert finished[-1].params["r"] == orphan.params["r"]
    assert run.read_json(SUMMARY)["n_finished"] == 2 and run.status == "done"


def test_same_seed_same_ranks_in_two_storages(tiny_model_dir, qa_file, tmp_path):
    picked = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        run = _search(tiny_model_dir, qa_file, n_trials=3, sampler_seed=11, storage=url)
        picked.append([t["r"] for t in run.read_json(SUMMARY)["trials"]])
    assert picked[0] == picked[1]


def test_hopeless_trials_are_pruned(tiny_model_dir, qa_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'pruning.db'}"
    study = optuna.create_study(study_name="p", storage=url)
    # A finished trial whose intermediate losses no real trial can match.
    study.add_trial(optuna.trial.create_trial(
        params={"r": 2}, distributions={"r": optuna.distributions.IntDistribution(2, 8)},
        value=0.0, intermediate_values={s: 0.0 for s in range(1, 9)}))
    run = _search(tiny_model_dir, qa_file, train={"seed": 99}, n_trials=3, storage=url,
                  study_name="p", prune_startup_trials=1)
    trials = run.read_json(SUMMARY)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    for t in trials[1:]:
        # Stopped at its first report (step 1 of 4): its training run did not finish.
        assert list(t["intermediate"]) == ["1"] and len(t["train_losses"]) == 1


@pytest.mark.parametrize("extra, message", [
    (["--r-min", "9", "--r-max", "4"], "rank range [9, 4] is invalid"),
    (["--r-min", "0"], "rank range [0, 16] is invalid"),
    (["--r-max", "64"], "outside the range"),
    (["--storage", "sqlite:////no/such/folder/study.db"], "cannot open the Optuna storage"),
    (["--storage", "nosuchdb://user:secret@host/db"], "cannot open the Optuna storage"),
    # The PostgreSQL driver is installed: an unreachable server is one line, its password hidden.
    (["--storage", "postgresql://user:secret@127.0.0.1:1/studies"], "Connection refused"),
    (["--storage", "postgressql://user:secret@127.0.0.1:1/studies"], "cannot open the Optuna storage"),
    (["--layers", ","], "layer list is empty"),
])
def test_bad_search_input_gets_one_clear_line(tiny_args, extra, message, capsys):
    layers = ["--layers", "1"] if "--layers" not in extra else []
    args = ["search-rank", *tiny_args, "--n-trials", "1", *layers, *extra]
    before = {r.id for r in list_runs()}
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert "secret" not in err
    assert {r.id for r in list_runs()} == before  # nothing left behind
