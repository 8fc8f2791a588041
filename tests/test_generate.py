"""A trained adapter in one's own code (two lines) and floe generate (base vs adapted)."""
from __future__ import annotations

import json

import pytest
import torch

from floe.cli import main
from floe.pipeline.export import export
from floe.pipeline.generate import GenerateConfig, adapter_location, generate_pair, generate_text, load_adapted

CONFIG = GenerateConfig(prompt="What is 3 plus 4?", max_new_tokens=6)


def test_two_lines_give_the_trained_model_from_an_export_a_run_or_plain_transformers(
        trained_run, tiny_model_dir, tmp_path):
    folder = export(trained_run.id, tmp_path / "export")
    model, tokenizer = load_adapted(str(folder), device="cpu")
    from_run, _ = load_adapted(trained_run.id, device="cpu")
    # The plain transformers route: the user's own model object, then load_adapter.
    from transformers import AutoModelForCausalLM

    from floe.adapters.hydralora import load_adapter
    own = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    load_adapter(own, folder / "adapter")
    ids = tokenizer("What is 3 plus 4?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = [m(ids).logits for m in (model, from_run, own)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    torch.testing.assert_close(logits[0], logits[2], rtol=1e-5, atol=1e-5)
    text = generate_text(model, tokenizer, CONFIG)
    assert text == generate_text(own, tokenizer, CONFIG)
    # The adapter is stateless: the KV cache gives what a full recomputation gives.
    with torch.no_grad():
        cached = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=True,
                                pad_token_id=tokenizer.pad_token_id)
        uncached = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=False,
                                  pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(cached, uncached)


def test_generate_pair_is_base_then_adapted(trained_run):
    model, tokenizer = load_adapted(trained_run.id, device="cpu")
    pair = generate_pair(model, tokenizer, CONFIG)
    from floe.adapters.hydralora import adapters_disabled
    with adapters_disabled(model):
        assert pair["base"] == generate_text(model, tokenizer, CONFIG)
    assert pair["adapted"] == generate_text(model, tokenizer, CONFIG)
    ids = tokenizer("What is 3 plus 4?", return_tensors="pt")["input_ids"]
    with torch.no_grad(), adapters_disabled(model):
        base_logits = model(ids).logits
    assert not torch.allclose(base_logits, model(ids).logits)  # the adapter changes the model


def test_floe_generate_from_the_cli(trained_run, capsys):
    assert main(["generate", "--adapter", trained_run.id, "--device", "cpu", "--prompt", "Hello",
                 "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"base", "adapted"} and all(isinstance(v, str) for v in out.values())


def test_unknown_sources_get_one_clear_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="give the model"):
        (tmp_path / "adapter_config.json").write_text("{}")
        adapter_location(str(tmp_path))
    assert main(["generate", "--adapter", str(tmp_path / "nothing-here"), "--quiet"]) == 2
    assert "error" in capsys.readouterr().err
