"""The scoring pipeline and its CLI on a tiny random model (real tokenizer, real data)."""
import json

import pytest

from floe.cli import main
from floe.pipeline.policies import ranking_for
from floe.pipeline.score import load_layers, load_units
from floe.store.runs import CorruptRunError, RunLockedError, open_run

FAST = ["--max-samples", "12", "--val-samples", "4", "--max-length", "48", "--batch-size", "4",
        "--score-samples", "8", "--score-batch-size", "4", "--device", "cpu", "--quiet", "--json"]


def _analyze(capsys, model_dir, *extra):
    code = main(["analyze", "--model", str(model_dir), *FAST, *extra])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_analyze_writes_a_complete_score_run(capsys, tiny_model_dir):
    code, out = _analyze(capsys, tiny_model_dir)
    assert code == 0
    assert len(out["layer_scores"]) == 4
    assert sorted(out["ranking"]) == sorted(out["ranking_without_refinement"]) == [0, 1, 2, 3]
    run = open_run(out["run"])
    layers = load_layers(run)
    assert layers["ranking"] == sorted(range(4), key=lambda k: (-layers["layer_scores"][k], k))
    assert all(0.0 <= s <= 1.0 for s in layers["layer_scores"])
    units = load_units(run)
    assert units["tau_heads"].shape == (4, 4) and units["tau_neurons"].shape == (4, 48)
    # The refined masks keep the budget: retained Taylor cost <= beta * total cost.
    kept = (units["cost_heads"] * units["refined_heads"]).sum() + \
        (units["cost_neurons"] * units["refined_neurons"]).sum()
    total = units["cost_heads"].sum() + units["cost_neurons"].sum()
    assert kept <= 0.5 * total * (1 + 1e-5)
    for policy in ("floe", "floe-no-refine", "random", "weight-norm", "adapter-norm", "all"):
        assert sorted(ranking_for(run, policy)) == [0, 1, 2, 3]
    timings = run.read_json("timings.json")
    assert {"taylor", "fisher", "search", "refine", "tune", "total", "device"} <= set(timings)
    stages = {r["stage"] for r in run.progress() if r.get("event") == "progress"}
    assert {"taylor", "fisher", "tune"} <= stages

    # Same config: reused (same run, same results); --force recomputes into the same folder.
    code, again = _analyze(capsys, tiny_model_dir)
    assert code == 0 and again["run"] == out["run"] and again["timings"] == out["timings"]
    code, forced = _analyze(capsys, tiny_model_dir, "--force")
    assert code == 0 and forced["run"] == out["run"] and forced["ranking"] == out["ranking"]
    assert forced["timings"]["total"] != out["timings"]["total"]


def test_a_tampered_run_is_reported_not_used(capsys, tiny_model_dir):
    code, out = _analyze(capsys, tiny_model_dir, "--seed", "3")
    run = open_run(out["run"])
    path = run.file("layers.json")
    path.write_text(path.read_text().replace('"ranking"', '"rankinq"', 1))
    with pytest.raises(CorruptRunError, match="checksum"):
        load_layers(run)
    code, err = _analyze(capsys, tiny_model_dir, "--seed", "3")
    assert code == 2 and "checksum" in err


def test_stability_study_ranks_every_layer_under_every_ratio(capsys, tiny_model_dir):
    code, out = _analyze(capsys, tiny_model_dir, "--ratios", "1.0,0.5")
    assert code == 0 and out["ratios"] == [1.0, 0.5]
    for ratio in ("1.0", "0.5"):
        assert sorted(out["ranks"][ratio]) == [1, 2, 3, 4]
        assert sorted(out["ranks_without_refinement"][ratio]) == [1, 2, 3, 4]
        per = out["per_ratio"][ratio]
        assert per["ratio"] == float(ratio)
        assert [out["ranks"][ratio][k] for k in per["ranking"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("args,message", [
    (["--beta", "0"], "beta must be in (0, 1]"),
    (["--beta", "1.5"], "beta must be in (0, 1]"),
    (["--ratio", "0"], "ratio must be in (0, 1]"),
    (["--ratios", "1.0,1.2"], "ratio must be in (0, 1]"),
    (["--batch-size", "64"], "fewer than the batch size 64"),
])
def test_bad_options_get_one_clear_line(capsys, tiny_model_dir, args, message):
    code, err = _analyze(capsys, tiny_model_dir, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_unsupported_architecture_is_named(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    code, err = _analyze(capsys, tmp_path)
    assert code == 2 and "'gpt2'" in err and "llama" in err


def test_missing_model_folder(capsys, tmp_path):
    code, err = _analyze(capsys, tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err


def test_a_run_held_by_a_live_process_is_locked(tmp_path):
    from floe.store.runs import run_for
    run = run_for("test", {"lock": str(tmp_path)})
    with run.hold():
        assert run.status == "running"
        with pytest.raises(RunLockedError):
            with run.hold():
                pass
    # The holder left without finishing: nobody holds it, so it reads as stale (resumable).
    assert not run.is_locked() and run.status == "stale"


def test_a_killed_job_leaves_a_stale_resumable_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from floe.store.runs import run_for
    run = run_for("test", {"kill": str(tmp_path)})
    code = ("import sys, time; from floe.store.runs import Run; from pathlib import Path\n"
            "r = Run(Path(sys.argv[1]))\n"
            "with r.hold():\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run.path)], stdout=subprocess.PIPE,
                            env={**os.environ})
    assert proc.stdout.readline().strip() == b"held"
    assert run.status == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert run.status == "stale"
    with run.hold():  # resumable: a new process can take it over
        assert run.status == "running"


@pytest.mark.parametrize("fill", [False, True])
def test_layers_json_fields_mean_what_they_say(capsys, tiny_model_dir, fill):
    """Each field recomputed from units.safetensors by its documented meaning."""
    import torch

    from floe.method.importance import unit_weight_counts
    code, out = _analyze(capsys, tiny_model_dir, "--fill" if fill else "--no-fill")
    assert code == 0
    run = open_run(out["run"])
    layers, units = load_layers(run), load_units(run)
    # binary_share: the retained share of capacity of the refined binary masks (hidden 32,
    # head_dim 8, group 2: a head gates 2*32*8 + 2*32*8/2 = 768 weights, a neuron 3*32 = 96).
    n_head, n_neuron = unit_weight_counts(32, 8, 2)
    assert (n_head, n_neuron) == (768.0, 96.0)
    kept = units["refined_heads"].sum(1) * n_head + units["refined_neurons"].sum(1) * n_neuron
    share = kept / (4 * n_head + 48 * n_neuron)
    assert layers["components"]["binary_share"] == pytest.approx(share.tolist(), abs=1e-6)
    # Refinement: the greedy masks' own loss and cost against C, then after fitting and at the end.
    tau = torch.cat([units["tau_heads"], units["tau_neurons"]], 1).double()
    cost = torch.cat([units["cost_heads"], units["cost_neurons"]], 1).double()
    greedy = torch.cat([units["greedy_heads"], units["greedy_neurons"]], 1).bool()
    refined = torch.cat([units["refined_heads"], units["refined_neurons"]], 1).bool()
    budget = 0.5 * float(cost.sum())
    ref = layers["refinement"]
    assert ref["fill"] is fill
    if fill:  # no masked unit would still fit the leftover budget
        assert bool((cost[~refined] > budget * (1 + 1e-6) - float(cost[refined].sum())).all())
    else:
        assert ref["filled"] == 0
    assert ref["greedy_loss"] == pytest.approx(float(tau[~greedy].sum()), rel=1e-6)
    assert ref["greedy_cost_ratio"] == pytest.approx(float(cost[greedy].sum()) / budget, rel=1e-6)
    assert ref["refined_loss"] == pytest.approx(float(tau[~refined].sum()), rel=1e-5)
    assert ref["refined_cost_ratio"] == pytest.approx(float(cost[refined].sum()) / budget, rel=1e-6)
    assert ref["refined_cost_ratio"] <= 1 + 1e-6
    assert ref["refined_loss"] <= ref["fit_loss"] + 1e-9
    if ref["greedy_cost_ratio"] <= 1:
        assert ref["dropped_to_fit"] == 0 and ref["fit_loss"] == pytest.approx(ref["greedy_loss"], rel=1e-6)
    # The new baselines: rankings by their stored signals, largest first.
    for name in ("lora_drop", "ht_sr", "weight_norm", "adapter_norm"):
        signal = layers["signals"][name]
        assert layers["baselines"][name] == sorted(range(4), key=lambda k: (-signal[k], k))
    assert all(v > 0 for v in layers["signals"]["lora_drop"])
    assert all(1 < v < 100 for v in layers["signals"]["ht_sr"])
