"""Models larger than one device: a tiny model dispatched by accelerate with some layers
offloaded to "cpu" and "disk" scores and trains exactly as the plain model."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_model
from test_taylor import batch

from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
from floe.method.baselines import weight_norms
from floe.method.fisher import mask_fisher
from floe.method.search import greedy_masks
from floe.method.taylor import average_costs, taylor_costs
from floe.method.tune import tune_mask_sets
from floe.models.dispatch import device_map_option, is_dispatched, weight_of
from floe.pipeline.train import TrainConfig, train

DEVICE_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dispatch-model")
    tiny_model("llama", num_hidden_layers=3).save_pretrained(path)
    return path


def _load(folder, device_map):
    from transformers import AutoModelForCausalLM

    from floe.models.load import dispatch_kwargs
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 **dispatch_kwargs(device_map, str(folder))).eval()
    torch.manual_seed(1)
    apply_hydralora(model, HydraLoraConfig(r=4, experts=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


def scores(model):
    batches = [batch(s) for s in range(2)]
    cost_h, cost_n = taylor_costs(model, batches, chunks=2)
    tau_h, tau_n = mask_fisher(model, batches)
    keep_h, keep_n = greedy_masks(tau_h, tau_n, *average_costs(cost_h, cost_n), 0.5)
    tuned = tune_mask_sets(model, batches, [(keep_h, keep_n)])[0]
    return {"cost_heads": cost_h, "cost_neurons": cost_n, "tau_heads": tau_h, "tau_neurons": tau_n,
            "tuned_heads": tuned.head_values, "tuned_neurons": tuned.neuron_values,
            "weight_norms": weight_norms(model, ["gate", "up", "down"])}


def test_the_offloaded_layers_are_really_offloaded(folder):
    model = _load(folder, DEVICE_MAP)
    assert is_dispatched(model)
    gate = model.model.layers[1].mlp.gate_proj
    assert gate.base.weight.device.type == "meta"       # on disk until called
    assert gate.lora_A.device.type == "cpu"             # the adapter lives where it computes
    assert weight_of(gate).device.type == "cpu" and weight_of(gate).abs().sum() > 0


def test_dispatched_model_scores_as_the_plain_one(folder):
    plain, dispatched = scores(_load(folder, None)), scores(_load(folder, DEVICE_MAP))
    for name, value in plain.items():
        torch.testing.assert_close(dispatched[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_dispatched_model_trains_as_the_plain_one(folder):
    rows = [{k: v[i].tolist() for k, v in batch(s).items()} for s in range(2) for i in range(3)]
    config = TrainConfig(batch_size=3, lr=1e-2, warmup_ratio=0.0, checkpoint_every=0)
    results = []
    for device_map in (None, DEVICE_MAP):
        model = _load(folder, device_map)
        before = model.model.layers[2].mlp.down_proj.lora_B.detach().clone()
        summary = train(model, rows, config, pad_id=0, show_progress=False)
        after = model.model.layers[2].mlp.down_proj.lora_B.detach().clone()
        assert not torch.equal(before, after)  # the offloaded layer's adapter did train
        results.append((summary["losses"], after))
    assert len(results[0][0]) == 2 and results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-6)


def test_device_map_option():
    assert device_map_option(None) is None and device_map_option("auto") == "auto"
    assert device_map_option('{"model.layers.0": "cpu"}') == {"model.layers.0": "cpu"}
    with pytest.raises(ValueError, match="--device-map"):
        device_map_option("everywhere")
