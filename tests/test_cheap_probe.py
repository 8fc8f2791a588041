"""Measured selection: the halving schedule (pure), the one-load adapter reset (training
layer l after layer m is training it in a fresh model), the cheap probe runs, policy
``probe`` in train and compare, and the joint probe's set search with policy ``probe-set``."""
import dataclasses
import json
import statistics

import pytest
import torch
from helpers import RANKINGS

from floe.cli import main
from floe.method.halving import halving_cost, halving_schedule, rank_by_rungs, successive_halving
from floe.pipeline.policies import POLICIES, available_policies, probe_ranking, ranking_for
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
    # Its readings are logged as they come, with their total: the app's progress bar follows them.
    readings = [e for e in open_run(joint["run"]).progress() if e["event"] == "progress" and e["stage"] == "probe"]
    assert [(e["done"], e["total"], e["layer"]) for e in readings] == [(1, 4, 0), (2, 4, 1), (3, 4, 2), (4, 4, 3)]
    from floe.app.runs import progress_of
    assert progress_of(readings[:2])["fraction"] == 0.5
    # Policy probe: no score run needed; model and data default to the probe's.
    code, trained = _cli(capsys, "train", "--policy", "probe", "--probe-run", out["run"], "--k", "2",
                         "--max-samples", "16", "--val-samples", "8", "--max-length", "48",
                         "--batch-size", "4", "--max-steps", "1", "--quiet")
    assert code == 0, trained
    assert trained["layers"] == sorted(probe["ranking"][:2])
    cfg = open_run(trained["run"]).config
    assert cfg["selection"] == {"policy": "probe", "k": 2, "score_run": None, "probe_run": out["run"]}


def test_the_joint_probe_draws_its_trainings_and_readings_unless_quiet(capsys, tiny_args):
    loud = [a for a in tiny_args if a != "--quiet"]
    assert main(["probe", *loud, "--schedule", "joint", "--seeds", "3", "--max-steps", "1", "--json"]) == 0
    err = capsys.readouterr().err
    assert "joint adapter, seed 3" in err and "single-layer readings" in err
    assert main(["probe", *tiny_args, "--schedule", "joint", "--seeds", "4", "--max-steps", "1", "--json"]) == 0
    err = capsys.readouterr().err
    assert "joint adapter" not in err and "single-layer readings" not in err


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


# --------------------------------------------------------------------------- set search (issue 20)
def _joint(capsys, tiny_args, *extra):
    code, out = _cli(capsys, "probe", *tiny_args, "--schedule", "joint", "--lr", "1e-2", "--max-steps", "2",
                     *extra)
    assert code == 0, out
    return out, open_run(out["run"]).read_json("probe.json")


def test_joint_probe_searches_sets_and_draws_each_rankings_curve(capsys, tiny_args):
    from floe.experiments.cheap_probe import search_cost
    from floe.method.setsearch import suggested_k
    out, probe = _joint(capsys, tiny_args, "--seeds", "1,2", "--set-search")
    found = probe["set_search"]
    layers, ks = [0, 1, 2, 3], [1, 2, 3, 4]
    assert found["ks"] == ks and found["n_seeds"] == 2 and found["score_run"] is None
    for name in ("forward", "backward"):
        search = found[name]
        assert sorted(search["order"]) == layers and search["ks"] == ks
        assert found["curves"][name] == search["losses"]  # a search's curve is its own sets
    assert found["better"] in ("forward", "backward") and found["ranking"] == found["rankings"][found["better"]]
    assert found["mean_loss"][found["better"]] == min(found["mean_loss"].values())
    assert set(found["curves"]) == {"probe", "forward", "backward", "deepest"}
    assert found["rankings"]["probe"] == probe["ranking"] and found["rankings"]["deepest"] == [3, 2, 1, 0]
    # k = 1 is the best single's measured loss, k = L every layer's, for every ranking.
    best = max(range(4), key=lambda k: probe["gain"][k])
    assert found["curves"]["probe"][0] == pytest.approx(probe["base_val_loss"] - probe["gain"][best])
    assert {c[-1] for c in found["curves"].values()} == {found["all_loss"]}
    # Forward's first pick is the best single; no set beats the search's at its size.
    assert found["forward"]["order"][0] == probe["ranking"][0]
    # The suggestion, the costs (each set once per seed; the singles were already read).
    assert found["suggested"]["k"] == suggested_k(ks, found["curves"][found["better"]], found["base_loss"],
                                                  found["all_loss"], 0.9)
    assert found["suggested"]["tolerance"] == 0.9 and "90%" in found["suggested"]["how"]
    assert 0 < found["sets_evaluated"] <= search_cost(4, 4, 2) and found["validation_passes"] == 2 * found[
        "sets_evaluated"]
    assert min(found["train_seconds"], found["search_seconds"], found["curve_seconds"]) >= 0
    assert out["set_search"]["curves"] == found["curves"] and out["suggested_k"] == found["suggested"]["how"]
    # Another tolerance reads the same run's curve again: the run is reused, not measured anew
    # (asked without --set-search: the probe's key is the same, and the stored search shows).
    code, again = _cli(capsys, "probe", *tiny_args, "--schedule", "joint", "--lr", "1e-2", "--max-steps", "2",
                       "--seeds", "1,2", "--tolerance", "1.0")
    assert code == 0 and again["run"] == out["run"]
    assert again["set_search"]["suggested"]["tolerance"] == 1.0
    assert again["set_search"]["suggested"]["k"] == suggested_k(ks, found["curves"][found["better"]],
                                                                found["base_loss"], found["all_loss"], 1.0)


def test_a_sets_loss_is_the_mean_over_seeds_of_that_seeds_joint_adapter(tiny_model_dir, qa_file):
    """What the search reads for a set, from the adapters kept in memory, equals training
    each seed's all-layer adapter afresh and switching on only that set."""
    from helpers import tiny_configs

    from floe.experiments.cheap_probe import (
        Bench,
        SetSearchConfig,
        joint_adapters,
        layer_adapter,
        measure_joint,
        only_layers_on,
        train_joint,
    )
    from floe.experiments.probe import ProbeConfig
    from floe.models.load import load_model
    from floe.pipeline.data import load_split, tokenize
    from floe.pipeline.train import train, validation_loss
    setup = tiny_configs(tiny_model_dir, qa_file, max_steps=2)

    def fresh() -> Bench:
        model, tok = load_model(setup.model.model, "cpu")
        for p in model.parameters():
            p.requires_grad_(False)
        split = load_split(setup.data)
        val = tokenize(tok, split.val, 48)
        return Bench(model, tokenize(tok, split.train, 48), val, tok.pad_token_id,
                     validation_loss(model, val, tok.pad_token_id))
    bench = fresh()
    states, _ = train_joint(bench, setup, [1, 2], 4)
    with joint_adapters(bench, setup.adapter, 4, states) as losses:
        read = losses(frozenset({0, 2}))
        assert losses(frozenset({0, 2})) == read  # reloading the weights changes nothing
        # The singles replay the blocks below them from the empty set's pass: the same loss, bit for bit.
        singles_in_full = {k: losses(frozenset({k})) for k in range(4)}
        replayed_before = losses.switched.blocks_replayed
        assert {k: losses(frozenset({k}), parent=frozenset()) for k in range(4)} == singles_in_full
        assert losses.switched.blocks_replayed - replayed_before == 2 * (0 + 1 + 2 + 3)  # two seeds
    for seed in (1, 2):
        alone = fresh()
        with layer_adapter(alone.model, setup.adapter, [0, 1, 2, 3], seed):
            train(alone.model, alone.rows, dataclasses.replace(setup.training, seed=seed), alone.pad_id,
                  show_progress=False)
            with only_layers_on(alone.model, {0, 2}):
                assert validation_loss(alone.model, alone.val, alone.pad_id) == pytest.approx(read[seed], abs=1e-6)
    # The search reads each set's mean over the seeds, with the empty set the base model.
    result = measure_joint(bench, setup, ProbeConfig(schedule="joint", seeds=[1, 2]), [0, 1, 2, 3], 4,
                           SetSearchConfig(set_search=True, search_max_k=2))
    found = result["set_search"]
    assert found["forward"]["ks"] == [1, 2] and found["search_max_k"] == 2
    assert found["rankings"]["forward"][:2] == found["forward"]["order"]  # completed by backward's order
    assert sorted(found["rankings"]["forward"]) == [0, 1, 2, 3]
    pair = found["rankings"]["deepest"][:2]  # 3, 2
    assert found["curves"]["deepest"][1] == pytest.approx(statistics.fmean(
        _set_losses(bench, setup, states, frozenset(pair)).values()))


def _set_losses(bench, setup, states, layers):
    from floe.experiments.cheap_probe import joint_adapters
    with joint_adapters(bench, setup.adapter, 4, states) as losses:
        return losses(layers)


def test_the_search_is_off_by_default_and_only_a_bounded_search_changes_the_key(tiny_model_dir, qa_file):
    from helpers import tiny_configs

    from floe.experiments.cheap_probe import SetSearchConfig, cheap_probe_run
    from floe.experiments.probe import ProbeConfig, probe_run
    assert SetSearchConfig().set_search is False  # opt-in: about L^2 validation passes per seed
    setup = tiny_configs(tiny_model_dir, qa_file)
    joint, halving = ProbeConfig(schedule="joint"), ProbeConfig(schedule="halving")
    default = probe_run(setup, joint).id  # the joint probe's key from before the set search
    assert cheap_probe_run(setup, joint).id == default
    assert cheap_probe_run(setup, joint, SetSearchConfig(tolerance=0.5)).id == default  # only reads the curve
    # The search adds to the probe's run: the same training, the same key.
    on = SetSearchConfig(set_search=True)
    assert cheap_probe_run(setup, joint, on).id == default
    assert cheap_probe_run(setup, joint, dataclasses.replace(on, tolerance=0.5)).id == default
    # A bounded forward selection is another search: its own key, only with the search on.
    bounded = cheap_probe_run(setup, joint, dataclasses.replace(on, search_max_k=8)).id
    assert bounded != default
    assert cheap_probe_run(setup, joint, SetSearchConfig(search_max_k=8)).id == default  # no search: no bound
    assert cheap_probe_run(setup, halving, dataclasses.replace(on, search_max_k=8)).id == probe_run(setup, halving).id
    for bad in (dict(search_max_k=0), dict(tolerance=0.0), dict(tolerance=1.2)):
        with pytest.raises(ValueError):
            SetSearchConfig(**bad)


def test_the_default_joint_probe_writes_no_search_and_set_search_adds_it(tiny_model_dir, qa_file):
    from helpers import tiny_configs

    from floe.experiments import cheap_probe
    from floe.experiments.probe import ProbeConfig, probe_run
    setup = tiny_configs(tiny_model_dir, qa_file, max_steps=1, lr=3e-3)
    probe = ProbeConfig(schedule="joint", seeds=[5])
    old = cheap_probe.run_cheap_probe(setup, probe, show_progress=False)
    assert old.id == probe_run(setup, probe).id  # the key it had before the set search
    assert "set_search" not in old.read_json("probe.json")
    with pytest.raises(ValueError, match="re-run floe probe --schedule joint --set-search"):
        ranking_for(old, "probe-set")
    again = cheap_probe.run_cheap_probe(setup, probe, show_progress=False,
                                        search=cheap_probe.SetSearchConfig(set_search=True))
    assert again.id == old.id and again.read_json("probe.json")["ranking"] == old.read_json("probe.json")["ranking"]
    assert ranking_for(again, "probe-set") == again.read_json("probe.json")["set_search"]["ranking"]
    # Asked again without the search, the probe with it is reused as it is.
    reused = cheap_probe.run_cheap_probe(setup, probe, show_progress=False)
    assert reused.id == old.id and "set_search" in reused.read_json("probe.json")


def test_policy_probe_set_trains_the_better_searchs_set(capsys, tiny_args, score_run):
    from floe.experiments.compare import CompareConfig, cell_selection
    out, probe = _joint(capsys, tiny_args, "--score-run", score_run, "--set-search")
    found = probe["set_search"]
    assert found["score_run"] == score_run and {"floe", "adapter-norm"} <= set(found["curves"])
    assert found["rankings"]["floe"] == RANKINGS["floe"]
    code, trained = _cli(capsys, "train", "--policy", "probe-set", "--probe-run", out["run"], "--k", "2",
                         "--max-samples", "16", "--val-samples", "8", "--max-length", "48",
                         "--batch-size", "4", "--max-steps", "1", "--quiet")
    assert code == 0, trained
    assert trained["layers"] == sorted(found["ranking"][:2])
    assert open_run(trained["run"]).config["selection"]["probe_run"] == out["run"]
    # compare takes it as it takes policy probe.
    sel = cell_selection(score_run, 2, "probe-set", 1, CompareConfig(policies=["probe-set", "floe"]), out["run"])
    assert sel.policy == "probe-set" and sel.probe_run == out["run"]
    # A halving probe has no set search: one clear line.
    code, halving = _cli(capsys, "probe", *tiny_args, "--schedule", "halving", "--max-steps", "4")
    assert code == 0 and "set_search" not in halving
    code, err = _cli(capsys, "train", *tiny_args, "--policy", "probe-set", "--probe-run", halving["run"], "--k", "2")
    assert code == 2 and "--schedule joint" in err and "Traceback" not in err


def test_probe_help_offers_the_set_search_options():
    from floe.cli import command_options
    names = {o.dest for o in command_options("probe")}
    assert {"set_search", "search_max_k", "tolerance"} <= names
    search = next(o for o in command_options("probe") if o.dest == "set_search")
    assert search.default is False and search.no_flag == "--no-set-search"  # --set-search turns it on
    assert "Off by default" in search.help and "L^2 validation passes" in search.help
    assert "probe-set" in dict((o.dest, o.choices) for o in command_options("train"))["policy"]


def test_replaying_the_blocks_below_the_switched_layer_gives_the_same_loss_bit_for_bit(tiny_model_dir, qa_file):
    """A set read with its parent's lower blocks replayed equals the set read in full,
    exactly, for every first differing block; the search reads the same with and without."""
    from helpers import tiny_configs

    from floe.experiments.cheap_probe import Bench, SetSearchConfig, search_sets, train_joint
    from floe.experiments.switched import SwitchedLoss, first_difference
    from floe.models.load import load_model
    from floe.models.replay import blocks_recorded, blocks_replayed
    from floe.pipeline.data import load_split, tokenize
    from floe.pipeline.train import validation_loss
    setup = tiny_configs(tiny_model_dir, qa_file, max_steps=2)
    model, tok = load_model(setup.model.model, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    split = load_split(dataclasses.replace(setup.data, val_samples=12))
    val = tokenize(tok, split.val, 48)
    assert len(val) == 12  # two batches of validation_loss
    bench = Bench(model, tokenize(tok, split.train, 48), val, tok.pad_token_id,
                  validation_loss(model, val, tok.pad_token_id))
    states, _ = train_joint(bench, setup, [1], 4)
    with joint_adapters_of(bench, setup, states) as losses:
        full = SwitchedLoss(model, val, tok.pad_token_id, max_bytes=0)  # replay off
        replaying = losses.switched
        cases = [({0, 1, 3}, {0, 1}), ({0, 2}, {0, 1, 2}), ({1, 2, 3}, {1, 2}), ({3}, set()), ({0, 3}, {3})]
        for layers, parent in cases:
            layers, parent = frozenset(layers), frozenset(parent)
            assert losses(layers, parent)[1] == full(layers)  # exactly, not approximately
        assert first_difference(frozenset({0, 1, 3}), frozenset({0, 1})) == 3
        assert replaying.blocks_replayed == 3 + 1 + 3 + 3 + 0 and replaying.recordings == 4  # ({0, 3}, {3}): none
        with blocks_recorded(model) as outputs:
            validation_loss(model, val[:4], tok.pad_token_id)  # one batch recorded
        with pytest.raises(RuntimeError, match="more forward calls"), blocks_replayed(model, 2, outputs):
            validation_loss(model, val[:4] * 2, tok.pad_token_id, batch_size=4)  # two asked
        assert "forward" not in vars(arch_blocks(model)[0])  # the blocks are themselves again

        def mean(switched):
            return lambda s, parent=None: switched(s, parent, key=1)
        search = SetSearchConfig(set_search=True)
        known = {frozenset(): bench.base_loss}
        with_replay = search_sets(mean(replaying), known, bench.base_loss, [0, 1, 2, 3], search, {})
        without = search_sets(mean(full), known, bench.base_loss, [0, 1, 2, 3], search, {})
    assert with_replay["curves"] == without["curves"] and with_replay["ranking"] == without["ranking"]
    assert replaying.blocks_replayed > 0 and full.blocks_replayed == 0


def joint_adapters_of(bench, setup, states):
    from floe.experiments.cheap_probe import joint_adapters
    return joint_adapters(bench, setup.adapter, 4, states)


def arch_blocks(model):
    from floe.models.arch import decoder_layers
    return decoder_layers(model)
