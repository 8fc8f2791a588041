"""The practitioners' policies and the new baselines' signals, on hand-computed values."""
import math

import pytest
import torch
from helpers import random_experts, tiny_model

from floe.adapters.hydralora import HydraLoraConfig, apply_hydralora
from floe.method.baselines import adapter_output_norms, hill_alpha, ht_sr_alphas
from floe.models import arch
from floe.pipeline.policies import MEASURED, POLICIES, available_policies, ranking_from, spread_ranking

OLD = {"n_layers": 5, "ranking": [3, 1, 4, 0, 2], "ranking_without_refinement": [3, 4, 1, 0, 2],
       "baselines": {"random": [2, 0, 1, 4, 3], "weight_norm": [0, 1, 2, 3, 4],
                     "adapter_norm": [4, 3, 2, 1, 0], "all": [0, 1, 2, 3, 4]}}


def test_derived_policies_on_an_old_layers_json():
    assert ranking_from(OLD, "deepest") == [4, 3, 2, 1, 0]
    assert ranking_from(OLD, "shallowest") == [0, 1, 2, 3, 4]
    assert ranking_from(OLD, "floe-reverse") == [2, 0, 4, 1, 3]
    assert ranking_from(OLD, "spread") == spread_ranking(5) == [2, 0, 3, 1, 4]
    assert "lora-drop" not in available_policies(OLD) and "deepest" in available_policies(OLD)
    with pytest.raises(ValueError, match="analysis again"):
        ranking_from(OLD, "lora-drop")
    new = {**OLD, "baselines": {**OLD["baselines"], "lora_drop": [1, 0, 2, 3, 4], "ht_sr": [0, 2, 1, 3, 4]}}
    assert ranking_from(new, "lora-drop") == [1, 0, 2, 3, 4] and ranking_from(new, "ht-sr")[1] == 2
    assert available_policies(new) == [p for p in POLICIES if p not in MEASURED]  # probe: a probe run's


def test_spread_top_k_is_spread_over_the_depth():
    order = spread_ranking(30)
    assert sorted(order) == list(range(30))
    assert order[:3] == [14, 22, 6]  # the middle, then the middle of each half
    for k in (2, 4, 8):
        top = sorted(order[:k])
        assert max(b - a for a, b in zip([-1, *top], [*top, 30])) <= 2 * 30 / k


def test_hill_alpha_by_hand():
    with pytest.raises(ValueError, match="2 positive"):
        hill_alpha(torch.tensor([0.0, 3.0]))


def _alpha_powers(base: float, n: int) -> float:
    """Hill alpha of eigenvalues base^0 .. base^(n-1): k = n // 2, threshold base^(n-k-1),
    tail base^(n-k) .. base^(n-1), whose logs over the threshold's are log(base) * (1..k)."""
    k = n // 2
    return 1 + k / (math.log(base) * k * (k + 1) / 2)


def test_ht_sr_alpha_of_each_layer_is_the_mean_over_its_weights():
    model = tiny_model("llama", num_hidden_layers=2)
    for layer, base in ((0, 2.0), (1, 4.0)):
        for role in arch.ROLES:
            w = arch.projection(model, layer, role).weight
            with torch.no_grad():
                w.zero_()
                n = min(w.shape)
                w[range(n), range(n)] = torch.tensor([base ** (j / 2) for j in range(n)])
    expected = []
    for base in (2.0, 4.0):  # k, v: 16 x 32 (n = 16); the other five: n = 32
        expected.append((2 * _alpha_powers(base, 16) + 5 * _alpha_powers(base, 32)) / 7)
    assert ht_sr_alphas(model).tolist() == pytest.approx(expected, rel=1e-6)


def test_lora_drop_sums_the_squared_adapter_output_over_real_tokens():
    torch.manual_seed(0)
    model = tiny_model("llama", num_hidden_layers=2).double()
    apply_hydralora(model, HydraLoraConfig(r=2, experts=1, targets=["gate", "down"]))
    inputs = {}
    for k in range(2):
        for role in ("gate", "down"):
            module = arch.projection(model, k, role)
            with torch.no_grad():
                module.lora_B.normal_()
            module.base.register_forward_pre_hook(
                lambda m, i, key=(k, role): inputs.__setitem__(key, i[0].detach()))
    ids = torch.randint(0, 96, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    norms = adapter_output_norms(model, [batch], ["gate", "down"])
    expected = []
    for k in range(2):
        total = 0.0
        for role in ("gate", "down"):
            m = arch.projection(model, k, role)
            delta = (m.scaling * inputs[(k, role)] @ m.lora_A.T @ m.lora_B[0].T).detach()  # [B, T, out]
            total += float((delta.square().sum(-1) * mask).sum())
        expected.append(total)
    assert norms.tolist() == pytest.approx(expected, rel=1e-9)
    assert all(v > 0 for v in expected)


def test_lora_drop_counts_each_role_of_a_fused_projection_once():
    """Phi-3 fuses q/k/v and gate/up: one HydraLoRA per role, nested around the fused
    linear. Each role's ||Delta h(x)||^2 (experts mixed by the router) must count once."""
    from floe.adapters.hydralora import base_layer, role_adapter
    model = tiny_model("phi3", num_hidden_layers=2).double()
    roles = list(arch.ROLES)
    apply_hydralora(model, HydraLoraConfig(r=2, experts=2, targets=roles, dropout=0.0))
    g = random_experts(model, 1)
    ids = torch.randint(3, 96, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    inputs, handles = {}, []
    for k in range(2):
        for role in roles:  # the fused linear's input is every role's input
            handles.append(base_layer(arch.projection(model, k, role)).register_forward_pre_hook(
                lambda m, i, key=(k, role): inputs.__setitem__(key, i[0].detach())))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    for h in handles:
        h.remove()
    share = {}
    for k in range(2):
        for role in roles:
            m, x = role_adapter(model, k, role).requires_grad_(False), inputs[(k, role)]
            w = torch.softmax(x @ m.lora_router.T, dim=-1)                      # [B, T, M]
            per_expert = torch.einsum("btr,mor->btmo", x @ m.lora_A.T, m.lora_B)  # B_i A x
            delta = m.scaling * (w.unsqueeze(-1) * per_expert).sum(-2)         # [B, T, rows]
            assert delta.shape[-1] == arch.role_weight(model, k, role).shape[0]
            share[k, role] = float((delta.square().sum(-1) * mask).sum())
    assert all(v > 0 for v in share.values())
    # q and gate are the innermost wrappers, v and up the outermost.
    for chosen in (roles, ["q", "v", "o"], ["gate", "up"], ["k", "down"]):
        expected = [sum(share[k, r] for r in chosen) for k in range(2)]
        # rel 1e-7: output - base(x) cancels digits; counting a role twice is off by > 1e-3
        assert adapter_output_norms(model, [batch], chosen).tolist() == pytest.approx(expected, rel=1e-7)


def test_spread_selects_k_evenly_spaced_layers():
    from floe.pipeline.policies import selected_layers, spread_layers
    assert spread_layers(30, 4) == [0, 10, 19, 29]
    assert spread_layers(30, 2) == [0, 29]
    assert spread_layers(30, 1) == [14] and spread_layers(5, 1) == [2]  # the middle (ties: lower)
    assert spread_layers(30, 3) == [0, 14, 29]                        # 14.5 -> 14: ties to the lower
    assert spread_layers(30, 30) == list(range(30)) and spread_layers(1, 1) == [0]
    assert spread_layers(18, 8) == [0, 2, 5, 7, 10, 12, 15, 17]
    for n in (1, 2, 7, 18, 30):
        for k in range(1, n + 1):
            chosen = spread_layers(n, k)
            assert len(set(chosen)) == k and chosen == sorted(chosen) and 0 <= chosen[0] <= chosen[-1] < n
            if k > 1:  # round(i (n-1) / (k-1)), halves down
                assert chosen == [round(i * (n - 1) / (k - 1) - 1e-9) for i in range(k)]
            # What train, compare and the app adapt for policy spread: exactly these layers.
            assert selected_layers("spread", ranking_from({**OLD, "n_layers": n}, "spread"), k) == chosen
    with pytest.raises(ValueError):
        spread_layers(30, 0)
    with pytest.raises(ValueError):
        spread_layers(30, 31)
    assert selected_layers("floe", [3, 1, 4, 0, 2], 3) == [1, 3, 4]  # other policies: first k


def test_hill_alpha_thresholds_at_lambda_n_minus_k():
    """METHOD's PL_Alpha_Hill: the tail is the largest k = n // 2 eigenvalues, the threshold
    the one below them, lambda_{n-k} (1-based, ascending); it is not itself in the tail."""
    ln2 = math.log(2)
    # 1, 2, 4, 8: k = 2, threshold 2, tail 4, 8 -> 1 + 2 / (log 2 + log 4)
    assert hill_alpha(torch.tensor([1.0, 2.0, 4.0, 8.0])) == pytest.approx(1 + 2 / (3 * ln2))
    # 1, 2, 4, 8, 16 (n = 5): k = 2, threshold 4 (the middle), tail 8, 16
    assert hill_alpha(torch.tensor([16.0, 1.0, 8.0, 2.0, 4.0])) == pytest.approx(1 + 2 / (3 * ln2))
    # Zero eigenvalues are not part of the spectrum: 1, 2, 4, 8 again.
    assert hill_alpha(torch.tensor([8.0, 0.0, 2.0, 1.0, 4.0])) == pytest.approx(1 + 2 / (3 * ln2))
    # Only the threshold and the tail matter: the eigenvalues below the threshold do not.
    lam = torch.tensor([0.5, 0.9, 1.0, 3.0, 7.0, 20.0])
    assert hill_alpha(lam) == pytest.approx(1 + 3 / sum(math.log(v / 1.0) for v in (3.0, 7.0, 20.0)))
    assert hill_alpha(torch.tensor([0.01, 0.2, 1.0, 3.0, 7.0, 20.0])) == pytest.approx(hill_alpha(lam))
    assert hill_alpha(torch.tensor([1.0, 3.0])) == pytest.approx(1 + 1 / math.log(3))  # n = 2: k = 1
    assert hill_alpha(torch.tensor([2.0, 2.0, 2.0, 2.0])) == math.inf


def test_hill_alpha_recovers_a_pareto_tail():
    """Eigenvalues drawn from a Pareto law with tail index a (P(lambda > x) = x^-a, density
    ~ x^-(1+a)): the Hill estimate of the density's exponent is 1 + a."""
    g = torch.Generator().manual_seed(0)
    for a in (1.0, 2.0, 4.0):
        lam = torch.rand(40_000, generator=g, dtype=torch.float64) ** (-1 / a)
        assert hill_alpha(lam) == pytest.approx(1 + a, abs=0.05 * a)


def test_policy_probe_set_reads_the_better_search_of_a_joint_probe():
    from floe.pipeline.policies import measured_policies, probe_set_ranking, selected_layers
    assert "probe-set" in POLICIES and "probe-set" in MEASURED
    joint = {"schedule": "joint", "layers": [0, 1, 2, 3], "gain": [0.1, 0.4, 0.3, 0.2], "ranking": [1, 2, 3, 0],
             "set_search": {"ranking": [2, 0, 1, 3], "better": "backward"}}
    assert probe_set_ranking(joint) == [2, 0, 1, 3]
    assert selected_layers("probe-set", probe_set_ranking(joint), 2) == [0, 2]  # the search's set of size 2
    assert measured_policies(joint) == ["probe", "probe-set"]
    old = {k: v for k, v in joint.items() if k != "set_search"}
    assert measured_policies(old) == ["probe"]
    with pytest.raises(ValueError, match="probe run probe-x has none.*off by default.*re-run floe probe "
                       "--schedule joint --set-search"):
        probe_set_ranking(old, "probe-x")
    for schedule in ("halving", "cells"):
        with pytest.raises(ValueError, match=f"is a {schedule} probe: run floe probe --schedule joint --set-search"):
            probe_set_ranking({**old, "schedule": schedule})
    with pytest.raises(ValueError, match="probe run"):
        ranking_from(OLD, "probe-set")  # not a score run's policy
