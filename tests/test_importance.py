from __future__ import annotations

import math

import pytest
import torch

from floe.method.importance import (
    all_layers,
    layer_components,
    layer_scores,
    norm_ranking,
    random_ranking,
    rank_layers,
    unit_weight_counts,
)


def test_unit_weight_counts_match_projection_sizes():
    # hidden 64, 8 query heads, 2 K/V heads (group 4), head_dim 8, intermediate 20.
    hidden, n_heads, n_kv, head_dim, inter = 64, 8, 2, 8, 20
    n_head, n_neuron = unit_weight_counts(hidden, head_dim, n_heads // n_kv)
    q = o = n_heads * head_dim * hidden
    k = v = n_kv * head_dim * hidden
    assert n_head * n_heads == q + k + v + o
    assert n_neuron * inter == 3 * hidden * inter
    # LLaMA2-7B (no GQA): 4 * 4096 * 128 per head, 3 * 4096 per neuron.
    assert unit_weight_counts(4096, 128, 1) == (4 * 4096 * 128, 3 * 4096)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_unit_weight_counts_rejects_bad_sizes(bad):
    with pytest.raises(ValueError):
        unit_weight_counts(64, bad, 1)


def hand_example():
    heads = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    neurons = torch.tensor([[1.0, 1.0], [-1.0, 0.25]])
    return heads, neurons


def test_hand_computed_scores_and_components():
    heads, neurons = hand_example()
    # Every head gates 3 weights, every neuron 1: capacity 8 per layer.
    # layer 0: (3 + 0 + 1 + 1) / 8 = 5/8 retained; layer 1: (1.5 + 3 + 0 + 0.25) / 8.
    parts = layer_components(heads, neurons, 3.0, 1.0)
    assert parts["head_share"].tolist() == pytest.approx([0.5, 0.75])
    assert parts["neuron_share"].tolist() == pytest.approx([1.0, 0.125])
    assert parts["head_fraction"].tolist() == pytest.approx([0.75, 0.75])
    assert parts["retained_share"].tolist() == pytest.approx([5 / 8, 4.75 / 8])
    assert parts["score"].tolist() == pytest.approx([3 / 8, 3.25 / 8])
    assert torch.equal(layer_scores(heads, neurons, 3.0, 1.0), parts["score"])


def test_scores_clip_values_to_unit_interval():
    heads, neurons = hand_example()
    clipped = layer_scores(heads.clamp(0, 1), neurons.clamp(0, 1), 3.0, 1.0)
    assert torch.equal(layer_scores(heads, neurons, 3.0, 1.0), clipped)
    big = layer_scores(torch.full((1, 2), 7.0), torch.full((1, 3), 1.5), 2.0, 1.0)
    negative = layer_scores(torch.full((1, 2), -3.0), torch.full((1, 3), -0.1), 2.0, 1.0)
    assert big.tolist() == [0.0] and negative.tolist() == [1.0]


def test_per_unit_weights_and_broadcasting():
    heads, neurons = hand_example()
    w_h = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    w_n = torch.tensor([4.0, 1.0])  # broadcast over layers
    scores = layer_scores(heads, neurons, w_h, w_n)
    manual = [
        1 - (1 * 1 + 3 * 0 + 4 * 1 + 1 * 1) / (1 + 3 + 4 + 1),
        1 - (2 * 0.5 + 2 * 1 + 4 * 0 + 1 * 0.25) / (2 + 2 + 4 + 1),
    ]
    assert scores.tolist() == pytest.approx(manual)
    same = layer_scores(heads, neurons, torch.full((2, 2), 3.0), torch.ones(2, 2))
    assert same.tolist() == pytest.approx(layer_scores(heads, neurons, 3.0, 1.0).tolist())


def test_capacity_weighting_matters():
    # Same masks, heavier heads: the masked head costs the layer more of its capacity.
    heads = torch.tensor([[0.0, 1.0]])
    neurons = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    light = layer_scores(heads, neurons, 1.0, 1.0)
    heavy = layer_scores(heads, neurons, 10.0, 1.0)
    assert light.item() == pytest.approx(1 / 6) and heavy.item() == pytest.approx(10 / 24)


@pytest.mark.parametrize(
    "heads, neurons, w_h, w_n, match",
    [
        (torch.tensor([[math.nan, 1.0]]), torch.ones(1, 2), 1.0, 1.0, "head_values"),
        (torch.ones(1, 2), torch.tensor([[1.0, math.inf]]), 1.0, 1.0, "neuron_values"),
        (torch.ones(2, 2), torch.ones(3, 2), 1.0, 1.0, "layers"),
        (torch.ones(1, 2), torch.ones(1, 2), 0.0, 1.0, "head_weights"),
        (torch.ones(1, 2), torch.ones(1, 2), 1.0, torch.tensor([1.0, -1.0]), "neuron_weights"),
        (torch.ones(1, 2), torch.ones(1, 2), torch.ones(3), 1.0, "broadcast"),
        (torch.ones(2), torch.ones(1, 2), 1.0, 1.0, "head_values"),
    ],
)
def test_score_input_errors(heads, neurons, w_h, w_n, match):
    with pytest.raises(ValueError, match=match):
        layer_scores(heads, neurons, w_h, w_n)


def test_rank_layers_descending_ties_to_lower_index():
    assert rank_layers(torch.tensor([0.1, 0.5, 0.5, 0.2, 0.5])) == [1, 2, 4, 3, 0]
    assert rank_layers(torch.zeros(6)) == list(range(6))
    assert rank_layers(torch.tensor([-0.0, 0.0, -1.0])) == [0, 1, 2]
    # Ties survive float64 conversion of float32 scores unchanged.
    assert rank_layers(torch.tensor([0.3, 0.3], dtype=torch.float32)) == [0, 1]


def test_rank_layers_errors():
    with pytest.raises(ValueError, match="non-finite"):
        rank_layers(torch.tensor([0.1, math.nan]))
    with pytest.raises(ValueError, match="1-D"):
        rank_layers(torch.zeros(2, 2))


def test_scores_rank_the_less_needed_layer_first():
    # Layer 1 keeps less of its capacity than layer 0, layer 2 keeps all of it.
    heads = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    neurons = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    n_head, n_neuron = unit_weight_counts(8, 2, 2)
    assert rank_layers(layer_scores(heads, neurons, n_head, n_neuron)) == [1, 0, 2]


def test_random_ranking_seeded():
    a = random_ranking(32, seed=0)
    assert a == random_ranking(32, seed=0)
    assert sorted(a) == list(range(32))
    assert a != random_ranking(32, seed=1)
    assert a != list(range(32))
    assert random_ranking(0, seed=3) == []
    with pytest.raises(ValueError):
        random_ranking(-1, seed=0)


def test_norm_ranking_largest_first():
    assert norm_ranking(torch.tensor([1.0, 3.0, 2.0, 3.0])) == [1, 3, 2, 0]
    with pytest.raises(ValueError):
        norm_ranking(torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError):
        norm_ranking(torch.tensor([1.0, math.nan]))


def test_all_layers():
    assert all_layers(4) == [0, 1, 2, 3]
    assert all_layers(0) == []
    with pytest.raises(ValueError):
        all_layers(2.0)
