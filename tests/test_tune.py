"""Least-squares mask tuning (METHOD 7): solver pieces without a model, then the
per-layer invariant error_tuned <= error_binary measured on a tiny adapted Llama."""
from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
from floe.method.masks import IGNORE_INDEX, mask_hooks
from floe.method.normal_equations import (
    NormalEquations,
    attention_normal_equations,
    ffn_normal_equations,
    quadratic_error,
    solve_ridge,
)
from floe.method.tune import tune_mask_sets, tune_masks
from floe.models import arch

L, H, H_KV, D, N, HIDDEN = 3, 4, 2, 8, 48, 32


# ------------------------------------------------------------- pure linear algebra


def explicit_A(W: torch.Tensor, acts: torch.Tensor, unit_size: int) -> torch.Tensor:
    """A with one column per unit: vec over (token, out) of W_u a_u(t)."""
    units = W.shape[1] // unit_size
    cols = []
    for u in range(units):
        s = slice(u * unit_size, (u + 1) * unit_size)
        cols.append((acts[:, s] @ W[:, s].T).flatten())
    return torch.stack(cols, 1)


@pytest.mark.parametrize("unit_size", [1, 3])
def test_normal_equations_match_explicit_A(unit_size):
    g = torch.Generator().manual_seed(unit_size)
    U, T, out = 5, 7, 6
    W = torch.randn(out, U * unit_size, generator=g, dtype=torch.float64)
    acts = torch.randn(T, U * unit_size, generator=g, dtype=torch.float64)
    b = torch.randn(T, out, generator=g, dtype=torch.float64)
    if unit_size == 1:
        gram, rhs = ffn_normal_equations(W, acts, b)
    else:
        gram, rhs = attention_normal_equations(W, acts, b, unit_size)
    A = explicit_A(W, acts, unit_size)
    torch.testing.assert_close(gram, A.T @ A)
    torch.testing.assert_close(rhs, A.T @ b.flatten())
    u = torch.randn(U, generator=g, dtype=torch.float64)
    torch.testing.assert_close(quadratic_error(b.square().sum(), gram, rhs, u),
                               (A @ u - b.flatten()).square().sum())


def test_solve_ridge():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(20, 6, generator=g, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    gram, rhs = A.T @ A, A.T @ b
    # No damping, full rank: the least-squares solution.
    torch.testing.assert_close(solve_ridge(gram, rhs, 0.0), torch.linalg.lstsq(A, b).solution)
    # Damping is relative to the mean diagonal and shrinks u toward 0.
    lam = 0.5 * gram.diagonal().mean()
    want = torch.linalg.solve(gram + lam * torch.eye(6, dtype=torch.float64), rhs)
    u = solve_ridge(gram, rhs, 0.5)
    torch.testing.assert_close(u, want)
    assert u.norm() < solve_ridge(gram, rhs, 0.0).norm()
    # Rank deficient (fewer rows than units): still solvable, and never worse than u = 0.
    A2 = A[:3]
    g2, r2 = A2.T @ A2, A2.T @ b[:3]
    for damping in (0.0, 1e-3):
        u2 = solve_ridge(g2, r2, damping)
        assert torch.isfinite(u2).all()
        assert quadratic_error(b[:3].square().sum(), g2, r2, u2) <= b[:3].square().sum()


def test_accumulation_and_retained_units_only():
    """Batches add up; masked units are fixed at 0, only retained ones are solved for."""
    g = torch.Generator().manual_seed(1)
    U, d, out = 4, 2, 5
    W = torch.randn(out, U * d, generator=g, dtype=torch.float64)
    acts = torch.randn(30, U * d, generator=g, dtype=torch.float64)
    b = torch.randn(30, out, generator=g, dtype=torch.float64)
    keep = torch.tensor([True, False, True, True])
    eq = NormalEquations(W, keep, d)
    eq.add(acts[:12], b[:12])
    eq.add(acts[12:], b[12:])
    fit = eq.solve(damping=0.0, bound=1e6)
    values, e0, e1 = fit.values, fit.error_binary, fit.error_tuned
    assert not fit.fallback and values[1] == 0
    cols = torch.tensor([0, 1, 4, 5, 6, 7])
    A = explicit_A(W[:, cols], acts[:, cols], d)
    u = torch.linalg.lstsq(A, b.flatten()).solution
    torch.testing.assert_close(values[keep], (1 + u).float().double())
    assert e0 == pytest.approx(float(b.square().sum()))
    assert e1 == pytest.approx(float((A @ u - b.flatten()).square().sum()), rel=1e-6)
    assert e1 < e0
    # A tiny bound rejects the solution: binary mask, same error.
    fit = eq.solve(damping=0.0, bound=0.5)
    assert fit.fallback and torch.equal(fit.values, keep.double())
    assert fit.error_tuned == fit.error_binary == e0
    # Nothing retained: nothing to solve, no fallback.
    empty = NormalEquations(W, torch.zeros(U, dtype=torch.bool), d)
    empty.add(acts, b)
    fit = empty.solve(1e-2, 10.0)
    assert not fit.fallback and (fit.values == 0).all()
    assert fit.error_tuned == fit.error_binary > 0


# ------------------------------------------------------------------ on a tiny model


def tiny_adapted_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=N,
                         num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H_KV)
    model = LlamaForCausalLM(config).double()
    apply_hydralora(model, HydraLoraConfig(r=4, experts=3, targets=["o", "gate", "up", "down"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.train()


def calibration(seed: int, B: int = 4, T: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    labels = torch.where(mask.bool(), ids, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def random_keep(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(L, H, generator=g) < 0.6, torch.rand(L, N, generator=g) < 0.5


def measured_errors(model, batches, head_values, neuron_values, k):
    """Errors of layer k measured by running the full model with masks (earlier layers and
    layer k at the given values) against the unmasked model, on real tokens. Llama and the
    other additive families: the residual stream after attention and after the FFN;
    post-norm families (Gemma, OLMo-2): the o_proj and down_proj outputs. Reaches into the
    models' modules (tests only)."""
    model.eval()  # adapter dropout off, as tune_masks runs it
    layer = model.model.layers[k]
    grabbed = {}
    if not arch.has_post_norms(model.config):
        hooks = [layer.post_attention_layernorm.register_forward_pre_hook(
                     lambda m, a: grabbed.__setitem__("h", a[0])),
                 layer.register_forward_hook(lambda m, a, out: grabbed.__setitem__("out", out))]
    else:
        hooks = [layer.self_attn.o_proj.register_forward_hook(
                     lambda m, a, out: grabbed.__setitem__("h", out)),
                 layer.mlp.down_proj.register_forward_hook(
                     lambda m, a, out: grabbed.__setitem__("out", out))]

    def run(hm, nm):
        outs = []
        for b in batches:
            with torch.no_grad(), mask_hooks(model, hm, nm):
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            real = b["attention_mask"].bool()
            outs.append((grabbed["h"][real], grabbed["out"][real]))
        return outs

    try:
        ones_h = torch.ones(L, H, dtype=torch.float64)
        ones_n = torch.ones(L, N, dtype=torch.float64)
        ref = run(ones_h, ones_n)
        hm, nm = ones_h.clone(), ones_n.clone()
        hm[:k + 1], nm[:k + 1] = head_values[:k + 1], neuron_values[:k + 1]
        # Attention error only needs h (layer k's FFN masks do not reach it).
        got = run(hm, nm)
        attn = sum((g[0] - r[0]).square().sum() for g, r in zip(got, ref))
        ffn = sum((g[1] - r[1]).square().sum() for g, r in zip(got, ref))
        return float(attn), float(ffn)
    finally:
        for h in hooks:
            h.remove()


def tiny_adapted_gemma3():
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=N,
                              num_hidden_layers=L, num_attention_heads=H,
                              num_key_value_heads=H_KV, head_dim=D, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention",
                                           "sliding_attention"])
    model = Gemma3ForCausalLM(config).double()
    apply_hydralora(model, HydraLoraConfig(r=4, experts=3))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.train()


def tiny_adapted_family(family: str):
    from helpers import tiny_model
    model = tiny_model(family, vocab_size=64, hidden_size=HIDDEN, intermediate_size=N,
                       num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H_KV,
                       head_dim=D).double()
    apply_hydralora(model, HydraLoraConfig(r=4, experts=3, targets=list(arch.ROLES)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.train()


@pytest.mark.parametrize("make_model", [tiny_adapted_model, tiny_adapted_gemma3])
def test_tuned_error_never_exceeds_binary_and_matches_measurement(make_model):
    check_tuned_errors(make_model(), [calibration(1), calibration(2, B=3, T=10)])


# Every other family (Granite: residual multiplier; OLMo-2, Gemma 2: post-norms; Phi-3: fused
# q/k/v and gate/up, all adapted). Right padding only: Gemma 2's eager fp64 mask gives NaN
# rows under left padding (floe pads right).
@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "phi3", "gemma2", "olmo2", "granite"])
def test_tuned_error_never_exceeds_binary_in_every_family(family):
    batches = [calibration(1), calibration(2, B=3, T=10)]
    for b in batches:
        b["attention_mask"][1] = 1
        b["attention_mask"][1, 8:] = 0
        b["labels"] = torch.where(b["attention_mask"].bool(), b["input_ids"], IGNORE_INDEX)
    check_tuned_errors(tiny_adapted_family(family), batches)


def check_tuned_errors(model, batches):
    keep_h, keep_n = random_keep(0)
    steps = []
    res = tune_masks(model, batches, keep_h, keep_n, damping=1e-4,
                     progress=lambda d, t: steps.append((d, t)))
    assert steps == [(k + 1, L) for k in range(L)]
    assert model.training
    assert (res.head_values[~keep_h] == 0).all() and (res.neuron_values[~keep_n] == 0).all()
    assert (res.error_tuned <= res.error_binary).all()
    # Tuning does something (random weights are hard to reconstruct: a few % here) ...
    assert (res.error_tuned < 0.97 * res.error_binary).any()
    assert not res.fallback[:, 0].any()  # ... and is mostly accepted

    binary_h, binary_n = keep_h.double(), keep_n.double()
    tuned_h, tuned_n = res.head_values.double(), res.neuron_values.double()
    for k in range(L):
        # Binary at layer k, tuned before: the reference error of the layer.
        mixed_h, mixed_n = tuned_h.clone(), tuned_n.clone()
        mixed_h[k], mixed_n[k] = binary_h[k], binary_n[k]
        bin_attn, _ = measured_errors(model, batches, mixed_h, mixed_n, k)
        mixed_h[k] = tuned_h[k]  # FFN's binary reference has the tuned heads upstream
        _, bin_ffn = measured_errors(model, batches, mixed_h, mixed_n, k)
        tun_attn, tun_ffn = measured_errors(model, batches, tuned_h, tuned_n, k)
        assert tun_attn <= bin_attn * (1 + 1e-9) and tun_ffn <= bin_ffn * (1 + 1e-9)
        torch.testing.assert_close(res.error_binary[k], torch.tensor([bin_attn, bin_ffn],
                                   dtype=torch.float64), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(res.error_tuned[k], torch.tensor([tun_attn, tun_ffn],
                                   dtype=torch.float64), rtol=1e-5, atol=1e-9)


def test_tiny_bound_falls_back_to_binary_masks():
    model = tiny_adapted_model()
    keep_h, keep_n = random_keep(1)
    res = tune_masks(model, [calibration(3)], keep_h, keep_n, bound=0.5)
    has_units = torch.stack([keep_h.any(1), keep_n.any(1)], 1)
    assert torch.equal(res.fallback, has_units)  # every m near 1 is outside [-0.5, 0.5]
    assert torch.equal(res.head_values, keep_h.float())
    assert torch.equal(res.neuron_values, keep_n.float())
    assert torch.equal(res.error_tuned, res.error_binary)


def test_all_retained_first_layer_attention_is_exact():
    """With every unit kept there is nothing to reconstruct: values stay 1, errors 0."""
    model = tiny_adapted_model()
    keep_h = torch.ones(L, H, dtype=torch.bool)
    keep_n = torch.ones(L, N, dtype=torch.bool)
    res = tune_masks(model, [calibration(4)], keep_h, keep_n)
    torch.testing.assert_close(res.head_values, torch.ones(L, H))
    torch.testing.assert_close(res.neuron_values, torch.ones(L, N))
    assert (res.error_binary < 1e-20).all()


def test_shapes_are_checked():
    model = tiny_adapted_model()
    with pytest.raises(ValueError):
        tune_masks(model, [calibration(5)], torch.ones(L, H + 1, dtype=torch.bool),
                   torch.ones(L, N, dtype=torch.bool))


@pytest.mark.parametrize("make_model", [tiny_adapted_model, tiny_adapted_gemma3])
def test_mask_sets_tuned_together_equal_tuned_apart(make_model):
    model = make_model()
    batches = [calibration(6), calibration(7, B=2, T=9)]
    sets = [random_keep(2), random_keep(3), random_keep(2)]
    together = tune_mask_sets(model, batches, sets, damping=1e-3)
    assert len(together) == 3
    for (keep_h, keep_n), got in zip(sets, together):
        alone = tune_masks(model, batches, keep_h, keep_n, damping=1e-3)
        for field in ("head_values", "neuron_values", "error_binary", "error_tuned", "fallback"):
            torch.testing.assert_close(getattr(got, field), getattr(alone, field),
                                       rtol=1e-9, atol=1e-12)
    assert together[0] is together[2]  # identical sets are tuned once
