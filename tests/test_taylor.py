"""Taylor costs (METHOD 3) against a brute-force per-weight computation."""
from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
from floe.method.masks import IGNORE_INDEX, per_sample_loss
from floe.method.taylor import average_costs, taylor_costs
from floe.models import arch

L, H, H_KV, D, N = 3, 4, 2, 8, 48


def tiny_base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=N,
                         num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H_KV)
    return LlamaForCausalLM(config).double()


def adapted_copy(base: LlamaForCausalLM) -> LlamaForCausalLM:
    """The same base weights plus HydraLoRA (on every projection) with random B experts."""
    model = copy.deepcopy(base)
    apply_hydralora(model, HydraLoraConfig(r=4, experts=3, targets=list(arch.ROLES)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.train()


def batch(seed: int, B: int = 3, T: int = 10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # right padding
    mask[1, :2] = 0  # left padding
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def brute_force_costs(model, batches):
    """|dL/dW * W| with autograd's .grad, L the mean per-sample loss, summed per unit by
    explicit loops over heads and neurons."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    weights = {(k, r): arch.projection(model, k, r).weight for k in range(L) for r in arch.ROLES}
    for w in weights.values():
        w.requires_grad_(True)
    n = sum(b["input_ids"].shape[0] for b in batches)
    for b in batches:
        (per_sample_loss(model, b).sum() / n).backward()
    sal = {key: (w.grad * w).abs() for key, w in weights.items()}
    heads = torch.zeros(L, H, dtype=torch.float64)
    neurons = torch.zeros(L, N, dtype=torch.float64)
    group = H // H_KV
    for k in range(L):
        for h in range(H):
            rows = slice(h * D, (h + 1) * D)
            kv = slice((h // group) * D, (h // group + 1) * D)
            heads[k, h] = (sal[k, "q"][rows].sum() + sal[k, "o"][:, rows].sum()
                           + (sal[k, "k"][kv].sum() + sal[k, "v"][kv].sum()) / group)
        for j in range(N):
            neurons[k, j] = (sal[k, "gate"][j].sum() + sal[k, "up"][j].sum()
                             + sal[k, "down"][:, j].sum())
    return heads, neurons


def test_taylor_equals_brute_force_on_the_base_model():
    base = tiny_base_model()
    model = adapted_copy(base)
    batches = [batch(1), batch(2, B=2, T=12)]
    steps = []
    heads, neurons = taylor_costs(model, batches, progress=lambda d, t: steps.append((d, t)))
    ref_h, ref_n = brute_force_costs(base, batches)
    assert heads.shape == (L, H) and neurons.shape == (L, N)
    assert (ref_h > 0).all() and (ref_n > 0).all()
    # fp64 model, but Llama's RMSNorm computes in fp32: agreement to ~1e-8, not 1e-15.
    torch.testing.assert_close(heads, ref_h, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(neurons, ref_n, rtol=1e-6, atol=1e-12)
    assert steps == [(1, 2), (2, 2)]
    # The adapters matter: had they been on, the costs would differ.
    adapted_h, _ = brute_force_costs(model, batches)
    assert not torch.allclose(heads, adapted_h, rtol=1e-3)


def test_gradients_are_summed_before_the_product():
    """Two batches give |(g1 + g2) * W|, not |g1 * W| + |g2 * W|: costs are not additive."""
    model = adapted_copy(tiny_base_model())
    b1, b2 = batch(3), batch(4)
    both_h, _ = taylor_costs(model, [b1, b2])
    h1, _ = taylor_costs(model, [b1])
    h2, _ = taylor_costs(model, [b2])
    assert (both_h <= (h1 + h2) / 2 + 1e-12).all()  # triangle inequality, with the 1/S mean
    assert not torch.allclose(both_h, (h1 + h2) / 2, rtol=1e-6)


def test_taylor_leaves_model_state_alone():
    model = adapted_copy(tiny_base_model())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    taylor_costs(model, [batch(5)])
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(m.enabled for m in model.modules() if hasattr(m, "enabled"))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_average_costs():
    heads = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    neurons = torch.tensor([[1.0, 1.0, 4.0]])
    assert average_costs(heads, neurons) == (3.0, 2.0)
