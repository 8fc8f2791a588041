
import pytest
import torch
from helpers import tiny_model

from floe.adapters.hydralora import (
    HydraLoraConfig,
    HydraLoraLinear,
    adapted_layers,
    adapters_disabled,
    apply_hydralora,
    load_adapter,
    save_adapter,
    trainable_parameters,
)
from floe.models import arch

IDS = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))


def _randomise_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_fresh_adapter_leaves_outputs_unchanged(family):
    model = tiny_model(family)
    before = model(IDS).logits
    apply_hydralora(model, HydraLoraConfig(dropout=0.0))
    assert torch.equal(model(IDS).logits, before)


def test_only_adapters_train_and_counts_match_the_formula():
    model = tiny_model()
    cfg = HydraLoraConfig(r=4, experts=3, targets=["gate", "down"], layers=[0, 2])
    apply_hydralora(model, cfg)
    h, n = 32, 48
    per_layer = (4 * h + 3 * n * 4 + 3 * h) + (4 * n + 3 * h * 4 + 3 * n)  # gate + down
    assert trainable_parameters(model) == 2 * per_layer
    assert adapted_layers(model) == [0, 2]
    assert all(not p.requires_grad for n_, p in model.named_parameters() if ".lora_" not in n_)


def test_forward_matches_the_written_formula():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = HydraLoraLinear(base, r=3, alpha=6.0, dropout=0.0, experts=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 7, 6)
    w = torch.softmax(x @ layer.lora_router.T, dim=-1)
    expected = base(x) + 2.0 * sum(w[..., i:i + 1] * (x @ layer.lora_A.T @ layer.lora_B[i].T)
                                   for i in range(4))
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 7))


def test_low_precision_base_keeps_fp32_adapters():
    layer = HydraLoraLinear(torch.nn.Linear(6, 5).to(torch.bfloat16), 2, 4.0, 0.0, 3)
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    assert layer.lora_A.dtype == layer.lora_router.dtype == torch.float32
    assert layer(x).dtype == torch.bfloat16


def test_adapter_stores_its_input_once_for_backward():
    """A and the router share one matmul: no extra copy of the layer input is saved."""
    base = torch.nn.Linear(64, 32, bias=False).requires_grad_(False)
    x = torch.randn(4, 16, 64, requires_grad=True)

    def saved_input_bytes(layer):
        storages = {}

        def pack(t):
            if t.numel() >= x.numel():  # activations, not the small adapter weights
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sum(storages.values())
    single = saved_input_bytes(HydraLoraLinear(base, 8, 16.0, 0.1, experts=1))
    assert saved_input_bytes(HydraLoraLinear(base, 8, 16.0, 0.1, experts=4)) == single


def test_single_expert_equals_peft_lora_with_the_same_weights():
    from peft import LoraConfig, get_peft_model
    ours, theirs = tiny_model(seed=3), tiny_model(seed=3)
    apply_hydralora(ours, HydraLoraConfig(r=4, alpha=8, dropout=0.0, experts=1, layers=[1, 2]))
    targets = [arch.role_suffix(theirs.config, r) for r in ("gate", "up", "down")]
    peft_model = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                   target_modules=[t.split(".")[-1] for t in targets],
                                                   layers_to_transform=[1, 2]))
    _randomise_adapters(ours, seed=5)
    with torch.no_grad():
        for k in (1, 2):
            for role in ("gate", "up", "down"):
                mine = arch.projection(ours, k, role)
                name = "base_model.model." + arch.module_name(theirs.config, k, role)
                ref = peft_model.get_submodule(name)
                ref.lora_A["default"].weight.copy_(mine.lora_A)
                ref.lora_B["default"].weight.copy_(mine.lora_B[0])
    assert torch.allclose(ours(IDS).logits, peft_model(IDS).logits, atol=1e-6)
    assert trainable_parameters(ours) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_disabling_adapters_gives_the_base_model_back():
    model = tiny_model()
    base = model(IDS).logits
    apply_hydralora(model, HydraLoraConfig(dropout=0.0))
    _randomise_adapters(model)
    adapted = model(IDS).logits
    assert not torch.allclose(adapted, base)
    with adapters_disabled(model):
        assert torch.equal(model(IDS).logits, base)
    assert torch.equal(model(IDS).logits, adapted)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    cfg = HydraLoraConfig(r=2, experts=2, dropout=0.0, layers=[0, 1], targets=["up", "o"])
    apply_hydralora(model, cfg)
    _randomise_adapters(model)
    save_adapter(model, cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = tiny_model()
    loaded = load_adapter(fresh, tmp_path)
    assert loaded.layers == [0, 1] and loaded.targets == ["up", "o"]
    assert torch.equal(fresh(IDS).logits, model(IDS).logits)


def test_loading_into_a_different_model_is_refused(tmp_path):
    model = tiny_model()
    apply_hydralora(model, HydraLoraConfig(layers=[0]))
    save_adapter(model, HydraLoraConfig(layers=[0]), tmp_path)
    with pytest.raises(ValueError, match="shape"):
        load_adapter(tiny_model(hidden_size=64, num_attention_heads=4), tmp_path)


@pytest.mark.parametrize("kwargs,match", [
    (dict(r=0), "rank"), (dict(experts=0), "experts"), (dict(targets=["ffn"]), "unknown target"),
    (dict(dropout=1.0), "dropout")])
def test_bad_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HydraLoraConfig(**kwargs)


def test_layers_outside_the_model_are_rejected():
    with pytest.raises(ValueError, match="3 layers"):
        apply_hydralora(tiny_model(), HydraLoraConfig(layers=[1, 7]))


def test_adapters_follow_the_models_train_or_eval_mode():
    model = tiny_model(seed=0).eval()
    apply_hydralora(model, HydraLoraConfig(r=2, dropout=0.5, layers=[0]))
    assert not any(m.training for m in model.modules())  # dropout off: loaded adapters infer
    model.train()
    assert all(m.training for m in model.modules())
