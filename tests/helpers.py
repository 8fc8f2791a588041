"""Helpers shared by the tests: tiny random models of each supported family, the rankings
and warm-up key of the fixture score run (app_fixtures.make_score_run writes it) and
configs for a seconds-long training.
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


def default_warmup_key(model_dir) -> dict:
    """The key of a default warm-up of ``model_dir`` (its real fingerprint): a fixture score
    run claiming it is accepted by training on that model."""
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig
    from floe.pipeline.warmup import warmup_key
    return warmup_key(Setup(ModelConfig(model=str(model_dir)), DataConfig(), HydraLoraConfig(), TrainConfig()))


def tiny_configs(model_dir, data_file, **train):
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig
    return Setup(ModelConfig(model=str(model_dir), device="cpu"),
                 DataConfig(data=data_file, max_samples=16, val_samples=8, max_length=48),
                 HydraLoraConfig(r=4),
                 TrainConfig(**{"batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, **train}))


def random_experts(model, seed: int, scale: float = 1.0):
    """Give every HydraLoRA expert B random values (they start at zero), so the adapters act."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return g

