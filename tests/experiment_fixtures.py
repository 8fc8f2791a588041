"""Fixtures shared by the tests of train / search-rank / eval / compare / export.

A small instruction file (fast to load, unlike the embedded sets), a score run folder
written by hand after docs/artifacts.md (so these tests do not depend on scoring), and
the option lists that make a tiny-model training take seconds.
"""
from __future__ import annotations

import json

import pytest

# Rankings of the fake score run (4 layers), most important first.
RANKINGS = {"floe": [1, 2, 3, 0], "floe-no-refine": [2, 3, 1, 0], "random": [2, 0, 3, 1],
            "weight-norm": [0, 1, 2, 3], "adapter-norm": [3, 1, 0, 2], "all": [0, 1, 2, 3]}


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory):
    rows = [{"instruction": f"What is {a} plus {b}?", "output": f"{a} plus {b} is {a + b}."}
            for a in range(10) for b in range(6)]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def write_score_run(model_dir, rankings=RANKINGS, n_layers: int = 4):
    """A finished score run for ``model_dir`` holding ``rankings`` (docs/artifacts.md)."""
    from floe.data import DataConfig
    from floe.hydralora import HydraLoraConfig
    from floe.runs import run_for
    from floe.train import TrainConfig
    from floe.warmup import ModelConfig, warmup_key

    warm = warmup_key(ModelConfig(model=str(model_dir)), DataConfig(), HydraLoraConfig(), TrainConfig())
    run = run_for("score", {"floe": "test", "warmup": warm, "warmup_run": "warmup-test",
                            "score": {"beta": 0.5}, "rankings": rankings})
    scores = [0.0] * n_layers
    for position, layer in enumerate(rankings["floe"]):
        scores[layer] = 1.0 - position / n_layers
    run.write_json("layers.json", {
        "model": str(model_dir), "data": "general", "ratio": 1.0, "seed": 42, "beta": 0.5,
        "n_layers": n_layers, "n_heads": 4, "n_neurons": 48, "layer_scores": scores,
        "ranking": rankings["floe"], "layer_scores_without_refinement": scores,
        "ranking_without_refinement": rankings["floe-no-refine"], "components": {},
        "baselines": {k.replace("-", "_"): v for k, v in rankings.items()
                      if k not in ("floe", "floe-no-refine")}})
    run.finish(["layers.json"])
    return run


@pytest.fixture(scope="session")
def score_run(tiny_model_dir):
    return write_score_run(tiny_model_dir).id


@pytest.fixture(scope="session")
def tiny_args(tiny_model_dir, qa_file):
    """CLI options for a seconds-long training of the tiny model."""
    return ["--model", str(tiny_model_dir), "--data", qa_file, "--max-samples", "16",
            "--val-samples", "8", "--max-length", "48", "--batch-size", "4", "--quiet"]


def tiny_configs(model_dir, data_file, **train):
    from floe.data import DataConfig
    from floe.hydralora import HydraLoraConfig
    from floe.train import TrainConfig
    from floe.warmup import ModelConfig
    return (ModelConfig(model=str(model_dir), device="cpu"),
            DataConfig(data=data_file, max_samples=16, val_samples=8, max_length=48),
            HydraLoraConfig(r=4),
            TrainConfig(**{"batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, **train}))


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, qa_file, score_run):
    """One finished sparse training (top-2 FLoE layers) shared by eval and export tests."""
    from floe.sparse import SparseConfig, run_sparse_training
    return run_sparse_training(*tiny_configs(tiny_model_dir, qa_file, epochs=2),
                               SparseConfig(score_run=score_run, policy="floe", k=2),
                               show_progress=False)
