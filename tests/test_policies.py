"""The practitioners' policies and the new baselines' signals, on hand-computed values."""
import math

import pytest
import torch
from helpers import tiny_model

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
    # eigenvalues 1, 2, 4, 8: tail from the median (index 2): 4, 8 -> 1 + 2 / log 2
    assert hill_alpha(torch.tensor([1.0, 2.0, 4.0, 8.0])) == pytest.approx(1 + 2 / math.log(2))
    assert hill_alpha(torch.tensor([8.0, 0.0, 2.0, 1.0, 4.0])) == pytest.approx(1 + 2 / math.log(2))
    with pytest.raises(ValueError, match="2 positive"):
        hill_alpha(torch.tensor([0.0, 3.0]))


def _alpha_powers(base: float, n: int) -> float:
    """Hill alpha of eigenvalues base^0 .. base^(n-1): tail base^i..base^(n-1), i = n // 2."""
    m = n - n // 2
    return 1 + m / (math.log(base) * m * (m - 1) / 2)


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
