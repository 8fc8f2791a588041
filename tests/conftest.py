"""Shared fixtures: the isolated cache, the real SmolLM2, a tiny model folder, and the data
and runs the tests after scoring share."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json

import pytest
from helpers import RANKINGS, default_warmup_key, tiny_configs, tiny_model


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests write runs to a temporary cache; converted models are shared read-only."""
    from floe.store import runs
    shared_models = runs.cache_root() / "models"  # converted embedded models, reused
    shared_models.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("cache")
    (root / "models").symlink_to(shared_models, target_is_directory=True)
    os.environ["FLOE_CACHE"] = str(root)
    yield root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of the test's own (its run folders can be counted); converted models shared."""
    from floe.store import runs
    root = tmp_path / "cache"
    root.mkdir()
    (root / "models").symlink_to(runs.cache_root() / "models", target_is_directory=True)
    monkeypatch.setenv("FLOE_CACHE", str(root))
    return root


@pytest.fixture
def queued_jobs(monkeypatch):
    """Jobs are queued on the CPU slot but not started: launching is tested in test_jobs and
    the browser test."""
    from floe.store import jobs
    monkeypatch.setenv("FLOE_DEVICE_SLOTS", "cpu")
    monkeypatch.setattr(jobs, "gpu_count", lambda: 0)
    monkeypatch.setattr(jobs, "_launch", lambda job, devices, root=None: job)


@pytest.fixture(scope="session")
def smol_path():
    """The real SmolLM2-135M-Instruct, converted once from its embedded GGUF."""
    from floe.models.load import convert_embedded
    return convert_embedded("smollm2-135m")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(smol_path)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A saved tiny random Llama with the real SmolLM2 tokenizer: a model folder for the CLI."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=len(smol_tokenizer), num_hidden_layers=4,
               max_position_embeddings=512).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- experiments
# A small instruction file (fast to load, unlike the embedded sets), a hand-written score
# run (so the tests after scoring do not depend on scoring) and one shared training.
@pytest.fixture(scope="session")
def qa_file(tmp_path_factory):
    rows = [{"instruction": f"What is {a} plus {b}?", "output": f"{a} plus {b} is {a + b}."}
            for a in range(10) for b in range(6)]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def score_run(tiny_model_dir):
    """A finished score run of the tiny model holding helpers.RANKINGS."""
    import app_fixtures as fx
    return fx.make_score_run(None, str(tiny_model_dir), rankings=RANKINGS,
                             warmup=default_warmup_key(tiny_model_dir)).id


@pytest.fixture(scope="session")
def tiny_args(tiny_model_dir, qa_file):
    """CLI options for a seconds-long training of the tiny model."""
    return ["--model", str(tiny_model_dir), "--data", qa_file, "--max-samples", "16",
            "--val-samples", "8", "--max-length", "48", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, qa_file, score_run):
    """One finished sparse training (top-2 FLoE layers) shared by eval and export tests."""
    from floe.pipeline.sparse import SparseConfig, run_sparse_training
    return run_sparse_training(tiny_configs(tiny_model_dir, qa_file, epochs=2),
                               SparseConfig(score_run=score_run, policy="floe", k=2),
                               show_progress=False)
