"""floe train: sparse HydraLoRA on the top-k layers of a ranking or an explicit list."""
import dataclasses
import json
import os
import subprocess
import sys

import app_fixtures as fx
import pytest
import torch
from helpers import RANKINGS, default_warmup_key, tiny_configs
from safetensors.torch import load_file

from floe.cli import main
from floe.pipeline.sparse import SparseConfig, resolve_layers, run_sparse_training, summary_of
from floe.store.runs import open_run


def _layers_in(adapter_file) -> set[int]:
    return {int(name.split(".")[2]) for name in load_file(str(adapter_file))}


def test_train_adapts_exactly_the_top_k_layers(tiny_args, score_run, capsys):
    code = main(["train", *tiny_args, "--score-run", score_run, "--policy", "floe", "--k", "2",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    expected = sorted(RANKINGS["floe"][:2])
    assert out["layers"] == expected
    run = open_run(out["run"])
    assert _layers_in(run.file("adapter/adapter_model.safetensors")) == set(expected)
    assert out["steps"] == out["total_steps"] == 4 and len(out["losses"]) == 4
    assert out["peak_memory_bytes"] > 0 and out["val_loss_after"] is not None
    # The same command reuses the finished run: no new training starts.
    starts = sum(r["event"] == "start" for r in run.progress())
    assert main(["train", *tiny_args, "--score-run", score_run, "--k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == out["run"]
    assert sum(r["event"] == "start" for r in run.progress()) == starts


@pytest.mark.parametrize("policy", sorted(RANKINGS))
def test_each_policy_takes_its_own_ranking(score_run, policy):
    layers = resolve_layers(SparseConfig(score_run=score_run, policy=policy, k=3), n_layers=4)
    assert layers == (sorted(RANKINGS[policy][:3]) if policy != "all" else [0, 1, 2, 3])


def test_explicit_layers_and_fewer_trainable_parameters(tiny_model_dir, qa_file, trained_run):
    one = run_sparse_training(tiny_configs(tiny_model_dir, qa_file), SparseConfig(layers=[3]),
                              show_progress=False)
    two = summary_of(trained_run)
    assert summary_of(one)["layers"] == [3]
    # Trainable parameters scale with the number of adapted layers (same rank and targets).
    assert two["trainable_parameters"] == 2 * summary_of(one)["trainable_parameters"]


def test_training_lowers_the_held_out_loss(trained_run):
    summary = summary_of(trained_run)
    assert summary["val_loss_after"] < summary["val_loss_before"]


def test_killed_training_resumes_to_the_same_adapter(tiny_model_dir, qa_file):
    setup = tiny_configs(tiny_model_dir, qa_file, epochs=2, checkpoint_every=2, seed=7)
    # No dropout: floe.pipeline.train restores weights and optimizer, not the RNG stream of dropout.
    setup = setup.replace(adapter=dataclasses.replace(setup.adapter, dropout=0.0))
    sparse = SparseConfig(layers=[0, 2])

    def die_at_step_3(record, validate):
        if record.get("step") == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sparse_training(setup, sparse, show_progress=False, on_record=die_at_step_3)
    run = run_sparse_training(setup, sparse, show_progress=False)
    assert run.status == "done" and summary_of(run)["resumed_from"] == 2
    resumed = load_file(str(run.file("adapter/adapter_model.safetensors")))

    fresh = run_sparse_training(setup, sparse, force=True, show_progress=False)
    assert summary_of(fresh)["resumed_from"] == 0
    again = load_file(str(fresh.file("adapter/adapter_model.safetensors")))
    assert all(torch.allclose(resumed[k], again[k], atol=1e-6) for k in again)


@pytest.mark.parametrize("extra, message", [
    (["--layers", ","], "layer list is empty"),
    (["--layers", "1,9"], "do not exist"),
    (["--k", "5"], "larger than the model's 4 layers"),
    (["--k", "0"], "k must be >= 1"),
    (["--layers", "1", "--r", "64"], "outside the range"),
    ([], "say which layers"),
    (["--k", "2", "--random-seed", "3"], "draws layers for policy random, not 'floe'"),
])
def test_bad_selections_get_one_clear_line(tiny_args, score_run, extra, message, capsys):
    with_score = ["--score-run", score_run] if "--k" in extra else []
    code = main(["train", *tiny_args, *with_score, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_score_run_of_another_model_is_refused(tiny_model_dir, qa_file, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # the fingerprint of another folder
    other = fx.make_score_run(None, str(elsewhere), rankings=RANKINGS, warmup=default_warmup_key(elsewhere))
    with pytest.raises(ValueError, match="computed on"):
        run_sparse_training(tiny_configs(tiny_model_dir, qa_file),
                            SparseConfig(score_run=other.id, k=2), show_progress=False)


def _train_on_two_processes(tiny_args):
    """DDP on two CPU processes (torchrun; `accelerate launch --cpu` starts only one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", "-m", "floe", "train", *tiny_args, "--layers", "1,3",
           "--seed", "5", "--warmup-ratio", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = next(line.split(": ")[1] for line in proc.stdout.splitlines() if line.startswith("run: "))
    return proc, open_run(run_id)


def test_two_processes_train_one_adapter(tiny_args):
    proc, run = _train_on_two_processes(tiny_args)
    assert "rank: 1" in proc.stdout  # the second process finished too
    summary = summary_of(run)
    assert summary["world_size"] == 2 and summary["layers"] == [1, 3]
    # 16 rows, 4 per process and step: two steps, one adapter written once.
    assert summary["steps"] == 2
    adapters = list(run.path.rglob("adapter_model.safetensors"))
    assert len(adapters) == 1
    assert any(v.abs().sum() > 0 for k, v in load_file(str(adapters[0])).items() if "lora_B" in k)


def test_two_processes_follow_the_single_process_lr_schedule(tiny_args):
    _, run = _train_on_two_processes(tiny_args)
    lrs = [r["lr"] for r in run.progress() if r.get("event") == "step"]
    assert lrs[0] == pytest.approx(2e-4 * 0.5)  # linear decay over 2 steps, no warm-up


def test_spread_adapts_the_k_evenly_spaced_layers(score_run):
    from floe.pipeline.policies import spread_layers
    assert resolve_layers(SparseConfig(score_run=score_run, policy="spread", k=2), n_layers=4) == [0, 3]
    for k in range(1, 5):
        assert (resolve_layers(SparseConfig(score_run=score_run, policy="spread", k=k), n_layers=4)
                == spread_layers(4, k))


def test_the_loss_before_training_is_the_base_models_measured_once(tiny_model_dir, qa_file, monkeypatch):
    """A fresh adapter adds exactly zero (B starts at zero), so the loss before training is the
    base model's, bit for bit, wherever the adapters sit: one pass serves every cell."""
    from floe.models.load import load_model
    from floe.pipeline import sparse
    from floe.pipeline.data import load_split, tokenize
    passes = []
    measure = sparse.validation_loss
    monkeypatch.setattr(sparse, "validation_loss", lambda *a, **kw: passes.append(1) or measure(*a, **kw))
    monkeypatch.setattr(sparse, "_LOSS_BEFORE", {})
    setup = tiny_configs(tiny_model_dir, qa_file, seed=11)  # a seed no other test trains
    runs = [run_sparse_training(setup, SparseConfig(layers=layers), show_progress=False) for layers in ([0], [2, 3])]
    before = [summary_of(r)["val_loss_before"] for r in runs]
    assert len(passes) == 1 + len(runs)  # one pass before, one after each training
    base, tok = load_model(str(tiny_model_dir), "cpu")
    val = tokenize(tok, load_split(setup.data).val, setup.data.max_length)
    assert before[0] == before[1] == measure(base, val, tok.pad_token_id)
