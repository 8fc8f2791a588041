import pytest
from helpers import tiny_model
from torch import nn

from floe.models import arch

FAMILIES = ["llama", "mistral", "qwen2", "gemma3_text"]


@pytest.mark.parametrize("family", FAMILIES)
def test_mapping_finds_every_projection_with_the_right_shapes(family):
    model = tiny_model(family)
    shape = arch.shape_of(model.config)
    assert len(arch.decoder_layers(model)) == shape.n_layers == 3
    assert shape.group == shape.n_heads // shape.n_kv_heads == 2
    for k in range(shape.n_layers):
        q, kk, v, o = (arch.projection(model, k, r) for r in "qkvo")
        gate, up, down = (arch.projection(model, k, r) for r in ("gate", "up", "down"))
        assert all(isinstance(m, nn.Linear) for m in (q, kk, v, o, gate, up, down))
        assert q.out_features == o.in_features == shape.n_heads * shape.head_dim
        assert kk.out_features == v.out_features == shape.n_kv_heads * shape.head_dim
        assert gate.out_features == up.out_features == down.in_features == shape.intermediate
        assert down.out_features == shape.hidden
        assert model.get_submodule(arch.module_name(model.config, k, "down")) is down


def test_gemma_head_dim_is_read_from_the_config():
    shape = arch.shape_of(tiny_model("gemma3_text", head_dim=16).config)
    assert shape.head_dim == 16 and shape.head_dim * shape.n_heads != shape.hidden


def test_unknown_architecture_names_the_supported_ones():
    from transformers import GPT2Config
    with pytest.raises(arch.UnsupportedArchitectureError) as e:
        arch.shape_of(GPT2Config())
    for name in ("gpt2", "llama", "mistral", "qwen2", "gemma3_text"):
        assert name in str(e.value)


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="unknown role"):
        arch.projection(tiny_model(), 0, "ffn")
