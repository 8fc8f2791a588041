"""Shared fixtures: tiny random models of each supported family, and the real SmolLM2."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def tiny_config(family: str = "llama", **overrides):
    from transformers import AutoConfig
    kw = {**TINY, **overrides}
    if family == "gemma3_text":
        kw.setdefault("head_dim", 8)
        kw.setdefault("sliding_window", 16)
    return AutoConfig.for_model(family, **kw)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests write runs to a temporary cache; converted models are shared read-only."""
    from floe import runs
    shared_models = runs.cache_root() / "models"  # converted embedded models, reused
    shared_models.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("cache")
    (root / "models").symlink_to(shared_models, target_is_directory=True)
    os.environ["FLOE_CACHE"] = str(root)
    yield root


@pytest.fixture(scope="session")
def smol_path():
    """The real SmolLM2-135M-Instruct, converted once from its embedded GGUF."""
    from floe.models import convert_embedded
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
