"""Scale features on the REAL SmolLM2-135M-Instruct with real embedded data: Taylor in
several passes, and a dispatched model with layers offloaded to disk, give the costs of
the plain one-pass scoring; its plan has every stage."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from floe.method.taylor import taylor_costs
from floe.models.load import dispatch_kwargs

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_batch(smol_tokenizer):
    from floe.pipeline.data import DataConfig, collate, load_split, tokenize
    rows = tokenize(smol_tokenizer, load_split(DataConfig(max_samples=8, val_samples=0, max_length=48)).train, 48)
    return [collate(rows[:4], smol_tokenizer.pad_token_id)]


def test_real_costs_in_passes_and_offloaded_equal_one_pass(smol_path, real_batch):
    plain = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32).eval()
    heads, neurons = taylor_costs(plain, real_batch)
    heads3, neurons3 = taylor_costs(plain, real_batch, chunks=3)
    torch.testing.assert_close(heads3, heads, rtol=1e-5, atol=0)
    torch.testing.assert_close(neurons3, neurons, rtol=1e-5, atol=0)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{k}": "cpu" if k < 20 else "disk" for k in range(30)}}
    dispatched = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32,
                                                      **dispatch_kwargs(device_map, str(smol_path))).eval()
    assert dispatched.model.layers[25].mlp.down_proj.weight.device.type == "meta"
    heads_d, neurons_d = taylor_costs(dispatched, real_batch, chunks=2)
    torch.testing.assert_close(heads_d, heads, rtol=1e-5, atol=0)
    torch.testing.assert_close(neurons_d, neurons, rtol=1e-5, atol=0)


def test_real_plan_has_every_stage(smol_path):
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.plan import build_plan
    from floe.pipeline.score import ScoreConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig
    plan = build_plan(Setup(ModelConfig(model="smollm2-135m", device="cpu"), DataConfig(), HydraLoraConfig(),
                            TrainConfig()), ScoreConfig(), device_memory_gib=8.0)
    assert set(plan.stages) == {"warmup", "taylor", "fisher", "tuning", "training"}
    # 135M fp32 parameters (tied embeddings) are the weights of every stage.
    assert plan.stages["training"].parts["weights"] == 134_515_008 * 4  # counted from config.json alone
    assert all(plan.fits(s) for s in plan.stages)
