"""A trained adapter in one's own code, and a prompt tried on base vs adapted (``floe generate``).

``load_adapted`` is the two-line path to a transformers model with a trained HydraLoRA
adapter, ready for ``model.generate``::

    from floe.pipeline.generate import load_adapted
    model, tokenizer = load_adapted("my-export")   # an export folder, a train run id, or
                                                   # an adapter folder with model=...

The adapter is plain PyTorch around the model's own linear layers, so ``generate`` (KV
cache included), ``adapters_disabled`` (the base model again) and saving work as usual.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from floe.adapters.hydralora import ADAPTER_CONFIG, adapters_disabled, load_adapter
from floe.models.load import load_model
from floe.store.config import option
from floe.store.runs import open_run

__all__ = ["GenerateConfig", "adapter_location", "generate_pair", "generate_text", "load_adapted"]


@dataclass
class GenerateConfig:
    """What to generate: a prompt, greedy decoding."""

    prompt: str = option("What should I eat before running a marathon?", "the prompt to complete")
    max_new_tokens: int = option(64, "tokens generated after the prompt (greedy decoding)")
    chat: bool = option(True, "wrap the prompt in the tokenizer's chat template when it has one")

    def __post_init__(self):
        if not self.prompt.strip() or self.max_new_tokens < 1:
            raise ValueError("give a non-empty --prompt and --max-new-tokens >= 1")


def adapter_location(source: str, model: str | None = None) -> tuple[str, Path]:
    """(model, adapter folder) of an export folder, a train run id, or an adapter folder
    (which needs ``model``)."""
    path = Path(source).expanduser()
    if (path / "config.yaml").is_file() and (path / "adapter" / ADAPTER_CONFIG).is_file():
        from floe.pipeline.export import read_config  # an export: its model, its adapter/
        return model or read_config(path / "config.yaml")["model"]["model"], path / "adapter"
    if (path / ADAPTER_CONFIG).is_file():
        if model is None:
            raise ValueError(f"{path} holds an adapter but not which model it belongs to: give the model")
        return model, path
    if path.exists():
        raise FileNotFoundError(f"{path} is neither a floe export nor an adapter folder "
                                f"(no {ADAPTER_CONFIG})")
    run = open_run(source)  # a train run id (FileNotFoundError if there is none)
    run.verify()
    return model or run.config["model"]["model"], run.file("adapter")


def load_adapted(source: str, model: str | None = None, device: str | None = None):
    """(model, tokenizer): the base model with the trained adapter of ``source`` attached,
    in eval mode (see ``adapter_location`` for what ``source`` may be)."""
    model_spec, folder = adapter_location(source, model)
    net, tokenizer = load_model(model_spec, device)
    load_adapter(net, folder)
    return net.eval(), tokenizer


def _prompt_ids(tokenizer, config: GenerateConfig) -> torch.Tensor:
    if config.chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": config.prompt}],
                                             tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return tokenizer(config.prompt, return_tensors="pt")["input_ids"]


@torch.no_grad()
def generate_text(model, tokenizer, config: GenerateConfig) -> str:
    """The greedy continuation of the prompt (new tokens only, special tokens dropped)."""
    ids = _prompt_ids(tokenizer, config).to(next(model.parameters()).device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def generate_pair(model, tokenizer, config: GenerateConfig) -> dict[str, str]:
    """{"base": ..., "adapted": ...}: the same prompt without and with the adapter."""
    with adapters_disabled(model):
        base = generate_text(model, tokenizer, config)
    return {"base": base, "adapted": generate_text(model, tokenizer, config)}
