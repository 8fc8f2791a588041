"""Mask Fisher (METHOD 4): the batched hook computation equals plain per-sample autograd."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from floe.adapters.hydralora import HydraLoraConfig, adapters_disabled, apply_hydralora
from floe.method.fisher import mask_fisher
from floe.method.masks import IGNORE_INDEX, capture_mask_gradients, frozen_parameters, mask_hooks, per_sample_loss

L, H, H_KV, N = 3, 4, 2, 48


def tiny_adapted_model(targets=("o", "gate", "up", "down")) -> LlamaForCausalLM:
    """A seeded fp64 GQA Llama with HydraLoRA whose B experts are random (adapters matter)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=N,
                         num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H_KV)
    model = LlamaForCausalLM(config).double()
    apply_hydralora(model, HydraLoraConfig(r=4, experts=3, targets=list(targets)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.train()  # dropout on: the scorer must switch it off itself


def padded_batch(seed: int, lengths=(9, 6, 11), prompts=(3, 2, 4), left=(False, True, False)):
    """Prompt + response sequences padded to a common length, right or left per sample."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (n, p, lpad) in enumerate(zip(lengths, prompts, left)):
        seq = torch.randint(1, 64, (n,), generator=g)
        span = slice(T - n, T) if lpad else slice(0, n)
        ids[i, span], mask[i, span] = seq, 1
        lab = seq.clone()
        lab[:p] = IGNORE_INDEX
        labels[i, span] = lab
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def autograd_fisher(model, batches):
    """tau by the definition: one sample at a time, masks as leaf tensors at 1."""
    tau_h = torch.zeros(L, H, dtype=torch.float64)
    tau_n = torch.zeros(L, N, dtype=torch.float64)
    model.eval()
    for batch in batches:
        for s in range(batch["input_ids"].shape[0]):
            single = {k: v[s:s + 1] for k, v in batch.items()}
            hm = torch.ones(L, H, dtype=torch.float64, requires_grad=True)
            nm = torch.ones(L, N, dtype=torch.float64, requires_grad=True)
            with mask_hooks(model, hm, nm):
                loss = per_sample_loss(model, single)[0]
            gh, gn = torch.autograd.grad(loss, [hm, nm])
            tau_h += gh.square()
            tau_n += gn.square()
    return tau_h, tau_n


def test_per_sample_loss_is_mean_token_ce_over_labels():
    model = tiny_adapted_model().eval()
    batch = padded_batch(1)
    got = per_sample_loss(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for s in range(3):
        pos = (batch["labels"][s, 1:] != IGNORE_INDEX).nonzero().flatten()
        logp = torch.log_softmax(logits[s, pos], -1)
        want = -logp.gather(1, batch["labels"][s, 1 + pos, None]).mean()
        torch.testing.assert_close(got[s], want.float().to(got.dtype))


@pytest.mark.parametrize("targets", [("o", "gate", "up", "down"), ("gate", "up", "down")])
def test_fisher_equals_per_sample_autograd_with_padding_and_gqa(targets):
    model = tiny_adapted_model(targets)
    batches = [padded_batch(1),
               padded_batch(2, lengths=(7, 10), prompts=(2, 5), left=(True, False))]
    steps = []
    tau_h, tau_n = mask_fisher(model, batches, progress=lambda d, t: steps.append((d, t)))
    ref_h, ref_n = autograd_fisher(model, batches)
    assert tau_h.shape == (L, H) and tau_n.shape == (L, N)
    assert (ref_h > 0).all() and (ref_n > 0).any()
    torch.testing.assert_close(tau_h, ref_h, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tau_n, ref_n, rtol=1e-9, atol=1e-12)
    assert steps == [(1, 2), (2, 2)]


def test_fisher_is_on_the_adapted_model():
    model = tiny_adapted_model()
    batches = [padded_batch(3)]
    tau_h, tau_n = mask_fisher(model, batches)
    with adapters_disabled(model):
        base_h, base_n = mask_fisher(model, batches)
        ref_h, _ = autograd_fisher(model, batches)
    torch.testing.assert_close(base_h, ref_h, rtol=1e-9, atol=1e-12)  # exact there too
    assert not torch.allclose(tau_h, base_h, rtol=1e-3)
    assert not torch.allclose(tau_n, base_n, rtol=1e-3)


def test_fisher_leaves_model_state_alone():
    model = tiny_adapted_model()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    mask_fisher(model, [padded_batch(4)])
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_per_sample_gradients_are_independent_of_batch_mates():
    """The [B, L, H] per-sample values equal those of each sample run alone."""
    model = tiny_adapted_model().eval()
    batch = padded_batch(5)
    with frozen_parameters(model), capture_mask_gradients(model) as grads:
        per_sample_loss(model, batch).sum().backward()
        heads, neurons = grads.take()
        for s in range(3):
            single = {k: v[s:s + 1] for k, v in batch.items()}
            per_sample_loss(model, single).sum().backward()
            h1, n1 = grads.take()
            torch.testing.assert_close(heads[s], h1[0], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(neurons[s], n1[0], rtol=1e-9, atol=1e-12)
        with pytest.raises(RuntimeError):
            grads.take()  # nothing captured since the last take


def test_masks_act_on_the_pretrained_weights_only():
    """Masking head 2 of layer 1 and neuron 5 of layer 0 equals zeroing those pretrained
    weight columns, adapters untouched (paper Eq. 2); hooks go away even on errors."""
    model = tiny_adapted_model().eval()
    batch = padded_batch(6)
    hm = torch.ones(L, H, dtype=torch.float64)
    nm = torch.ones(L, N, dtype=torch.float64)
    hm[1, 2], nm[0, 5] = 0.0, 0.0
    with torch.no_grad(), mask_hooks(model, hm, nm):
        got = per_sample_loss(model, batch)
    d = 32 // H
    with torch.no_grad():
        o = model.model.layers[1].self_attn.o_proj.base.weight
        down = model.model.layers[0].mlp.down_proj.base.weight
        saved_o, saved_down = o[:, 2 * d:3 * d].clone(), down[:, 5].clone()
        o[:, 2 * d:3 * d], down[:, 5] = 0.0, 0.0
        want = per_sample_loss(model, batch)
        o[:, 2 * d:3 * d], down[:, 5] = saved_o, saved_down
        plain = per_sample_loss(model, batch)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, plain)
    with pytest.raises(ZeroDivisionError), mask_hooks(model, hm, nm):
        _ = 1 / 0
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError):
        with mask_hooks(model, torch.ones(L, H + 1)):
            pass
