"""The probe on a tiny random model: cells are cached sparse trainings, gains and their
intervals, leave-one-out, shared cells through an Optuna storage, and the CLI's summary."""
import json
import os

import pytest

from floe.cli import main
from floe.experiments.probe import ALL, ProbeConfig, cell_layers, layer_gains, plan_cells
from floe.pipeline.sparse import summary_of
from floe.store.runs import open_run


def _probe(capsys, *args):
    code = main(["probe", *args, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_plan_and_cell_layers():
    single = ProbeConfig(seeds=[1, 2], layers=[2, 0])
    assert plan_cells(single, 4) == [(0, 1), (2, 1), (0, 2), (2, 2)]
    loo = ProbeConfig(mode="leave-one-out", seeds=[7])
    assert plan_cells(loo, 3) == [(ALL, 7), (0, 7), (1, 7), (2, 7)]
    assert cell_layers(1, "single", 3) == [1]
    assert cell_layers(1, "leave-one-out", 3) == [0, 2]
    assert cell_layers(ALL, "leave-one-out", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="do not exist"):
        plan_cells(ProbeConfig(layers=[5]), 4)
    with pytest.raises(ValueError, match="distinct seeds"):
        ProbeConfig(seeds=[1, 1])


def test_layer_gains_mean_and_t_interval():
    cells = [{"layer": 0, "gain": g} for g in (1.0, 2.0, 3.0)] + [{"layer": 1, "gain": 0.5}]
    means, cis = layer_gains(cells, [0, 1, 2], [1, 2, 3], 0.95)
    assert means == [2.0, 0.5, None]
    # t(0.975, 2) = 4.303, s = 1, n = 3: half width 4.303 / sqrt 3 = 2.484
    assert cis[0]["half_width"] == pytest.approx(4.3027 / 3 ** 0.5, rel=1e-3)
    assert cis[1]["half_width"] is None and cis[2]["n"] == 0


def test_probe_cli_measures_gains_reuses_cells_and_reports_agreement(capsys, tiny_args, score_run):
    args = [*tiny_args, "--score-run", score_run, "--seeds", "1,2", "--lr", "1e-2"]
    code, out = _probe(capsys, *args)
    assert code == 0, out
    assert out["layers"] == [0, 1, 2, 3] and len(out["gain"]) == 4
    run = open_run(out["run"])
    probe = run.read_json("probe.json")
    assert not probe["partial"] and len(probe["cells"]) == 8
    for cell in probe["cells"]:  # each cell is a sparse training of that layer alone
        summary = summary_of(open_run(cell["train_run"]))
        assert summary["layers"] == [cell["layer"]]
        assert cell["gain"] == pytest.approx(summary["val_loss_before"] - summary["val_loss_after"])
    for k, gain in zip(out["layers"], out["gain"]):
        values = [c["gain"] for c in probe["cells"] if c["layer"] == k]
        assert gain == pytest.approx(sum(values) / 2)
    assert all(lo <= g <= hi for (lo, hi), g in zip(out["gain_ci"], out["gain"]))
    # The fixture score run predates lora-drop and ht-sr: the derived policies still work.
    assert {"floe", "deepest", "shallowest", "spread", "floe-reverse"} <= set(out["agreement"])
    assert "lora-drop" not in out["agreement"]
    floe, reverse = out["agreement"]["floe"], out["agreement"]["floe-reverse"]
    assert floe["spearman"] == pytest.approx(-reverse["spearman"])
    assert len(floe["precision_at_k"]) == 4 and floe["precision_at_k"][-1] == 1.0
    # Twice: the same run, every cell reused (no retraining).
    stamps = {c["train_run"]: open_run(c["train_run"]).file("state.json").stat().st_mtime_ns
              for c in probe["cells"]}
    code, again = _probe(capsys, *args)
    assert code == 0 and again["run"] == out["run"] and again["gain"] == out["gain"]
    assert stamps == {r: open_run(r).file("state.json").stat().st_mtime_ns for r in stamps}


def test_leave_one_out_shared_through_an_optuna_storage(capsys, tiny_args, tmp_path):
    storage = f"sqlite:///{tmp_path / 'probe.db'}"
    code, out = _probe(capsys, *tiny_args, "--mode", "leave-one-out", "--layers", "1,3",
                       "--storage", storage, "--study-name", "shared")
    assert code == 0, out
    probe = open_run(out["run"]).read_json("probe.json")
    reference = [c for c in probe["cells"] if c["layer"] == ALL]
    assert len(reference) == 1 and reference[0]["adapted"] == [0, 1, 2, 3]
    for cell in probe["cells"]:
        if cell["layer"] != ALL:
            assert cell["adapted"] == [k for k in range(4) if k != cell["layer"]]
            assert cell["gain"] == pytest.approx(cell["val_loss_after"] - reference[0]["val_loss_after"])
    import optuna
    study = optuna.load_study(study_name="shared", storage=storage)
    assert sorted(t.params["cell"] for t in study.trials) == [0, 1, 2]  # each cell drawn once
    assert probe["storage"] == storage and out["score_run"] is None and out["agreement"] == {}


@pytest.mark.parametrize("args,message", [
    (["--layers", "9"], "do not exist"),
    (["--mode", "sideways"], "invalid choice"),
    (["--seeds", "3,3"], "distinct seeds"),
])
def test_bad_probe_options_get_one_clear_line(capsys, tiny_args, args, message):
    try:
        code, err = _probe(capsys, *tiny_args, *args)
    except SystemExit as e:  # argparse's own choice check
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_an_unreachable_storage_is_one_line_and_leaves_no_run(capsys, tiny_args):
    from floe.store.runs import list_runs
    before = {r.id for r in list_runs()}
    code, err = _probe(capsys, *tiny_args, "--storage", "postgresql://floe:secret@127.0.0.1:1/studies")
    assert code == 2 and "Connection refused" in err and len(err.strip().splitlines()) == 1
    assert "secret" not in err and {r.id for r in list_runs()} == before


def test_a_killed_probe_resumes_at_the_first_missing_cell(tiny_model_dir, qa_file, monkeypatch):
    from helpers import tiny_configs

    import floe.experiments.probe as probe_module
    setup = tiny_configs(tiny_model_dir, qa_file)
    probe = ProbeConfig(layers=[0, 1, 2], seeds=[5])
    real, trained = probe_module._train_cell, []

    def dies_after_two(*args, **kwargs):
        if len(trained) == 2:
            raise KeyboardInterrupt  # Ctrl-C or a killed job, between two cells
        trained.append(real(*args, **kwargs))
        return trained[-1]
    monkeypatch.setattr(probe_module, "_train_cell", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        probe_module.run_probe(setup, probe, show_progress=False)
    run = probe_module.probe_run(setup, probe)
    assert run.status != "done" and len(run.read_json("probe.json")["cells"]) == 2
    stamps = {c["train_run"]: open_run(c["train_run"]).file("state.json").stat().st_mtime_ns
              for c in trained}
    monkeypatch.setattr(probe_module, "_train_cell", real)
    run = probe_module.run_probe(setup, probe, show_progress=False)
    cells = run.read_json("probe.json")["cells"]
    assert run.status == "done" and [c["layer"] for c in cells] == [0, 1, 2]
    assert stamps == {r: open_run(r).file("state.json").stat().st_mtime_ns for r in stamps}


# --------------------------------------------------------------------------- shared cells
def _grid(tmp_path):
    from floe.store.storage import open_storage
    return open_storage(f"sqlite:///{tmp_path / 'grid.db'}")


def test_shared_cells_are_computed_once_and_read_back_from_the_storage(tmp_path):
    from floe.experiments.shared import share_cells, shared_progress
    storage, labels, computed = _grid(tmp_path), ["a", "b", "c"], []

    def compute(i):
        computed.append(i)
        return {"value": i * 10}
    first = share_cells(storage, "g", labels, compute)
    assert first == [{"value": 0}, {"value": 10}, {"value": 20}] and sorted(computed) == [0, 1, 2]
    # Another worker (or a later process) computes nothing and gets the same results.
    assert share_cells(storage, "g", labels, compute) == first and len(computed) == 3
    progress = shared_progress(f"sqlite:///{tmp_path / 'grid.db'}", "g")
    assert [(p["label"], p["state"]) for p in progress] == [("a", "done"), ("b", "done"), ("c", "done")]
    assert all(p["worker"].endswith(f":{os.getpid()}") for p in progress)
    with pytest.raises(ValueError, match="shares another grid"):
        share_cells(storage, "g", ["x", "y"], compute)


def test_a_cell_interrupted_by_ctrl_c_is_computed_again(tmp_path, monkeypatch):
    from floe.experiments.shared import share_cells
    monkeypatch.setenv("FLOE_HEARTBEAT_SECONDS", "1")  # an orphan is queued after two looks, 1 s apart
    storage, calls = _grid(tmp_path), []

    def interrupted(i):
        calls.append(i)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"value": i}
    with pytest.raises(KeyboardInterrupt):
        share_cells(storage, "g", ["a", "b", "c"], interrupted)
    lost = calls[-1]
    calls.clear()
    results = share_cells(storage, "g", ["a", "b", "c"], lambda i: calls.append(i) or {"value": i})
    assert results == [{"value": 0}, {"value": 1}, {"value": 2}]
    assert lost in calls and len(calls) == 2  # the lost cell (queued again) and the one never drawn


def test_a_second_trial_of_a_cell_does_not_compute_it():
    """GridSampler's fallback (or two workers queueing one orphan) can give a cell a second
    trial: the lowest-numbered live trial computes it, and a finished cell is never redone."""
    from optuna.trial import FrozenTrial, TrialState

    from floe.experiments.shared import RESULT, taken_by

    def trial(number, state, cell, result=False, grid_id=None):
        return FrozenTrial(number=number, state=state, value=None, values=None, datetime_start=None,
                           datetime_complete=None, params={} if cell is None else {"cell": cell},
                           distributions={}, user_attrs={RESULT: {}} if result else {},
                           system_attrs={} if grid_id is None else {"grid_id": grid_id},
                           intermediate_values={}, trial_id=number)
    running, waiting = trial(0, TrialState.RUNNING, 5), trial(1, TrialState.WAITING, 5)
    assert taken_by([running, waiting], 1, 5) == "held by trial 0"
    assert taken_by([running, waiting], 0, 5) is None  # the lowest computes it
    assert taken_by([trial(0, TrialState.FAIL, 5), waiting], 1, 5) is None  # a retry
    assert taken_by([trial(0, TrialState.PRUNED, 5), waiting], 1, 5) is None
    assert "done by trial 3" in taken_by([trial(3, TrialState.COMPLETE, 5, result=True)], 1, 5)
    assert taken_by([running], 2, 4) is None  # another cell
    # A lower trial given the same grid point that has not drawn its cell yet holds it too.
    pending, late = trial(0, TrialState.RUNNING, None, grid_id=7), trial(9, TrialState.RUNNING, 5, grid_id=7)
    assert taken_by([pending, late], 9, 5) == "held by trial 0"
