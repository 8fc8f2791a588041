"""Helpers shared by the tests: tiny random models of each supported family, a
hand-written score run (after docs/artifacts.md) and configs for a seconds-long training.
Fixtures live in conftest.py; tests import these by module name (tests/ is on sys.path)."""
from __future__ import annotations

import torch

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


# Every supported family (floe.models.arch.ARCHITECTURES), made with transformers' own
# config classes; FAMILY_OPTIONS sets what differs from the family's defaults so that its
# peculiarity is exercised (Granite's multipliers default to 1).
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "olmo2", "granite"]
FAMILY_OPTIONS = {
    "gemma2": dict(sliding_window=16),
    "gemma3_text": dict(sliding_window=16),
    "granite": dict(residual_multiplier=0.5, embedding_multiplier=2.0, attention_multiplier=0.3,
                    logits_scaling=2.0),
}


def tiny_config(family: str = "llama", **overrides):
    from transformers import AutoConfig
    # head_dim explicitly: Qwen3 and Gemma default to a large one; pad id inside the vocab.
    kw = {**TINY, "head_dim": 8, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
          **FAMILY_OPTIONS.get(family, {}), **overrides}
    return AutoConfig.for_model(family, **kw)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    return model.eval()


# Rankings of the fake score run (4 layers), most important first.
RANKINGS = {"floe": [1, 2, 3, 0], "floe-no-refine": [2, 3, 1, 0], "random": [2, 0, 3, 1],
            "weight-norm": [0, 1, 2, 3], "adapter-norm": [3, 1, 0, 2], "all": [0, 1, 2, 3]}


def write_score_run(model_dir, rankings=RANKINGS, n_layers: int = 4):
    """A finished score run for ``model_dir`` holding ``rankings`` (docs/artifacts.md)."""
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.train import TrainConfig
    from floe.pipeline.warmup import ModelConfig, warmup_key
    from floe.store.runs import run_for

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


def tiny_configs(model_dir, data_file, **train):
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.train import TrainConfig
    from floe.pipeline.warmup import ModelConfig
    return (ModelConfig(model=str(model_dir), device="cpu"),
            DataConfig(data=data_file, max_samples=16, val_samples=8, max_length=48),
            HydraLoraConfig(r=4),
            TrainConfig(**{"batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, **train}))
