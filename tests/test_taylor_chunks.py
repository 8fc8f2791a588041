"""Bounded-memory Taylor scoring: N passes over the data, each gathering the gradients of
one group of layers, give the costs of one pass."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_model
from test_taylor import batch

from floe.method.taylor import capture_weight_gradients, layer_chunks, taylor_costs


def test_layer_chunks_cover_every_layer_once():
    for n_layers in (1, 3, 7, 32):
        for chunks in (1, 2, 3, 5, 40):
            groups = layer_chunks(n_layers, chunks)
            assert [k for g in groups for k in g] == list(range(n_layers))
            assert len(groups) <= min(chunks, n_layers)
    assert [list(g) for g in layer_chunks(5, 2)] == [[0, 1, 2], [3, 4]]


@pytest.mark.parametrize("chunks", [2, 3])
def test_chunked_costs_equal_one_pass(chunks):
    model = tiny_model("llama", num_hidden_layers=3).double()
    batches = [batch(s) for s in range(3)]
    heads, neurons = taylor_costs(model, batches)
    heads_c, neurons_c = taylor_costs(model, batches, chunks=chunks)
    assert heads.abs().sum() > 0 and neurons.abs().sum() > 0
    torch.testing.assert_close(heads_c, heads, rtol=1e-12, atol=0)
    torch.testing.assert_close(neurons_c, neurons, rtol=1e-12, atol=0)


def test_a_pass_keeps_buffers_for_its_layers_only():
    model = tiny_model("llama", num_hidden_layers=3).double()
    with capture_weight_gradients(model, range(1, 2)) as sums:
        from floe.method.masks import frozen_parameters, per_sample_loss
        with frozen_parameters(model):
            per_sample_loss(model, batch(0)).sum().backward()
    assert {k for k, _ in sums.sums} == {1}


def test_progress_counts_every_pass():
    model = tiny_model("llama", num_hidden_layers=3)
    seen = []
    taylor_costs(model, [batch(0), batch(1)], progress=lambda done, total: seen.append((done, total)),
                 chunks=3)
    assert seen[-1] == (6, 6)
