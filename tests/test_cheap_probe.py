"""Measured selection: the halving schedule (pure), the one-load adapter reset (training
layer l after layer m is training it in a fresh model), the cheap probe runs, and policy
``probe`` in train and compare."""
import json

import pytest
import torch

from floe.cli import main
from floe.method.halving import halving_cost, halving_schedule, rank_by_rungs, successive_halving
from floe.pipeline.policies import POLICIES, available_policies, probe_ranking
from floe.pipeline.sparse import SparseConfig
from floe.store.runs import open_run


def _cli(capsys, *args):
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


# --------------------------------------------------------------------------- halving (pure)
def test_halving_schedule_halves_layers_and_doubles_steps():
    assert halving_schedule(30, 8) == [(30, 1), (15, 2), (8, 4), (4, 8)]
    assert halving_schedule(30, 8, min_steps=2) == [(30, 2), (15, 4), (8, 8)]
    assert halving_cost(halving_schedule(30, 8)) == 30 + 30 + 32 + 32
    assert halving_schedule(4, 8) == [(4, 2), (2, 4), (1, 8)]  # stops at one layer
    assert halving_schedule(5, 1) == [(5, 1)]  # no budget to halve: every layer once
    assert halving_schedule(30, 9, eta=3) == [(30, 1), (10, 3), (4, 9)]
    with pytest.raises(ValueError, match="above max_steps"):
        halving_schedule(4, 2, min_steps=3)


def test_successive_halving_keeps_the_better_half_and_ranks_by_rung():
    true_gain = {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.7, 4: 0.2, 5: 0.3}
    calls = []

    def measure(layer, steps):  # a gain that grows with steps and keeps the order
        calls.append((layer, steps))
        return true_gain[layer] * steps
    out = successive_halving(list(range(6)), measure, halving_schedule(6, 4))
    assert [r["steps"] for r in out["rungs"]] == [1, 2, 4]
    assert out["rungs"][0]["kept"] == [1, 2, 3] and out["rungs"][1]["kept"] == [1, 3]
    assert out["ranking"] == [1, 3, 2, 5, 4, 0]
    assert len(calls) == 6 + 3 + 2 and out["measured"][1] == {1: 0.9, 2: 1.8, 4: 3.6}
    # A layer that went further ranks above a dropped one whatever its gain.
    assert rank_by_rungs([{"layers": [0, 1], "gains": [5.0, 1.0]},
                          {"layers": [1], "gains": [0.5]}]) == [1, 0]


# --------------------------------------------------------------------------- one-load reset
def test_training_a_layer_after_another_equals_a_fresh_model(tiny_model_dir, qa_file):
    from helpers import tiny_configs

    from floe.experiments.cheap_probe import Bench, train_layers
    from floe.models.load import load_model
    from floe.pipeline.data import load_split, tokenize
    setup = tiny_configs(tiny_model_dir, qa_file, max_steps=3)
    adapter, training = setup.adapter, setup.training

    def fresh() -> Bench:
        model, tok = load_model(setup.model.model, "cpu")
        split = load_split(setup.data)
        return Bench(model, tokenize(tok, split.train, 48), tokenize(tok, split.val, 48), tok.pad_token_id, 0.0)
    bench = fresh()
    model = bench.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    after_m = train_layers(bench, adapter, training, [0], 3)
    reused = train_layers(bench, adapter, training, [2], 3)
    assert {n: p for n, p in model.named_parameters()}.keys() == before.keys()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # base untouched
    alone = train_layers(fresh(), adapter, training, [2], 3)
    assert reused == alone  # bit-identical on CPU
    assert reused != after_m  # and the two layers did differ


def test_cheap_probe_runs_and_policy_probe_trains_its_top_k(capsys, tiny_args, tiny_model_dir):
    code, out = _cli(capsys, "probe", *tiny_args, "--schedule", "halving", "--lr", "1e-2",
                     "--max-steps", "4")
    assert code == 0, out
    probe = open_run(out["run"]).read_json("probe.json")
    assert probe["schedule"] == "halving" and sorted(probe["ranking"]) == [0, 1, 2, 3]
    assert [(len(r["layers"]), r["steps"]) for r in probe["rungs"]] == [(4, 2), (2, 4)]
    top = probe["rungs"][-1]["layers"]
    assert probe["ranking"][:len(top)] == sorted(top, key=lambda k: -probe["gain"][k])
    assert probe_ranking(probe) == probe["ranking"]
    # The same probe is reused; the joint schedule is another run.
    assert _cli(capsys, "probe", *tiny_args, "--schedule", "halving", "--lr", "1e-2",
                "--max-steps", "4")[1]["run"] == out["run"]
    code, joint = _cli(capsys, "probe", *tiny_args, "--schedule", "joint", "--lr", "1e-2", "--seeds", "1,2")
    assert code == 0 and joint["run"] != out["run"]
    assert joint["ranking"] == sorted(range(4), key=lambda k: (-joint["gain"][k], k))
    assert all(lo <= g <= hi for (lo, hi), g in zip(joint["gain_ci"], joint["gain"]))  # 2 seeds: intervals
    # Policy probe: no score run needed; model and data default to the probe's.
    code, trained = _cli(capsys, "train", "--policy", "probe", "--probe-run", out["run"], "--k", "2",
                         "--max-samples", "16", "--val-samples", "8", "--max-length", "48",
                         "--batch-size", "4", "--max-steps", "1", "--quiet")
    assert code == 0, trained
    assert trained["layers"] == sorted(probe["ranking"][:2])
    cfg = open_run(trained["run"]).config
    assert cfg["selection"] == {"policy": "probe", "k": 2, "score_run": None, "probe_run": out["run"]}


def test_a_first_rung_of_only_warm_up_steps_is_refused(capsys, tiny_args):
    code, err = _cli(capsys, "probe", *tiny_args, "--schedule", "halving", "--min-steps", "1",
                     "--max-steps", "4")
    assert code == 2 and "raise --min-steps" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--policy", "probe", "--k", "2"], "give --probe-run"),
    (["--policy", "probe", "--probe-run", "probe-nope", "--k", "2"], "no probe run"),
])
def test_policy_probe_errors_are_one_clear_line(capsys, tiny_args, args, message):
    code, err = _cli(capsys, "train", *tiny_args, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_policy_probe_refuses_a_probe_of_another_model(capsys, tiny_args, tmp_path, smol_tokenizer):
    from helpers import tiny_model
    code, out = _cli(capsys, "probe", *tiny_args, "--schedule", "joint", "--max-steps", "1")
    assert code == 0, out
    other = tmp_path / "other"
    tiny_model("llama", vocab_size=len(smol_tokenizer), num_hidden_layers=4, seed=5,
               max_position_embeddings=512).save_pretrained(other)
    smol_tokenizer.save_pretrained(other)
    args = [a if a != tiny_args[1] else str(other) for a in tiny_args]
    code, err = _cli(capsys, "train", *args, "--policy", "probe", "--probe-run", out["run"], "--k", "2")
    assert code == 2 and "measured" in err and "Traceback" not in err


def test_policy_probe_is_in_the_one_list_but_not_a_score_run_policy(score_run):
    from floe.pipeline.policies import ranking_for
    from floe.pipeline.score import load_layers
    assert "probe" in POLICIES
    run = open_run(score_run)
    assert "probe" not in available_policies(load_layers(run))
    with pytest.raises(ValueError, match="probe run"):
        ranking_for(run, "probe")
    with pytest.raises(ValueError, match="--probe-run"):
        SparseConfig(policy="probe", k=2)
    assert probe_ranking({"layers": [0, 1, 2], "gain": [0.1, None, 0.3]}) == [2, 0, 1]
    # A cheap probe is checked by its ranking (its gains compare only within a rung).
    from floe.experiments.validation import agreement_table
    cheap = {"layers": [0, 1, 2, 3], "gain": [9.0, 0.0, 5.0, 1.0], "ranking": [3, 2, 1, 0], "n_layers": 4}
    table = agreement_table(load_layers(run), cheap, n_boot=50)
    assert table["deepest"]["spearman"] == pytest.approx(1.0) and "probe" not in table


def test_compare_takes_the_probe_ranking_on_another_data_seed(capsys, tiny_args, score_run):
    code, probe = _cli(capsys, "probe", *tiny_args, "--schedule", "joint", "--max-steps", "1")
    assert code == 0, probe
    args = [*tiny_args, "--score-run", score_run, "--probe-run", probe["run"], "--seed", "7",
            "--policies", "probe,floe", "--ks", "2", "--seeds", "1", "--no-include-all",
            "--max-steps", "1", "--tasks", "arc-easy", "--limit", "2"]
    code, out = _cli(capsys, "compare", *args)
    assert code == 0, out
    summary = open_run(out["run"]).read_json("compare.json")
    sel = summary["selection"]
    assert sel["probe_run"] == probe["run"] and sel["probe_data"]["seed"] == 42
    assert sel["n_val"] == 8 and 0 <= sel["val_seen_by_probe"] <= 8
    ranking = open_run(probe["run"]).read_json("probe.json")["ranking"]
    cell = next(r for r in summary["results"] if r["policy"] == "probe")
    assert cell["layers"] == sorted(ranking[:2])
    code, err = _cli(capsys, "compare", *[a for a in args if a not in ("--probe-run", probe["run"])])
    assert code == 2 and "--probe-run" in err


def test_readme_states_the_min_steps_default():
    """README's `--min-steps` default is the option's (ProbeConfig), not the pure schedule's."""
    import re
    from pathlib import Path

    from floe.experiments.probe import ProbeConfig
    stated = re.search(r"`--min-steps` \((?:default )?(\d+)", (Path(__file__).parents[1] / "README.md").read_text())
    assert stated is not None and int(stated.group(1)) == ProbeConfig().min_steps == 2
