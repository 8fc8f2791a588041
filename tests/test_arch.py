import pytest
import torch
from helpers import FAMILIES, tiny_config, tiny_model
from torch import nn

from floe.models import arch


@pytest.mark.parametrize("family", FAMILIES)
def test_mapping_finds_every_projection_with_the_right_shapes(family):
    model = tiny_model(family)
    shape = arch.shape_of(model.config)
    assert len(arch.decoder_layers(model)) == shape.n_layers == 3
    assert shape.group == shape.n_heads // shape.n_kv_heads == 2
    for k in range(shape.n_layers):
        assert all(isinstance(arch.projection(model, k, r), nn.Linear) for r in arch.ROLES)
        q, kk, v, o, gate, up, down = (arch.role_weight(model, k, r) for r in arch.ROLES)
        assert q.shape == o.T.shape == (shape.n_heads * shape.head_dim, shape.hidden)
        assert kk.shape == v.shape == (shape.n_kv_heads * shape.head_dim, shape.hidden)
        assert gate.shape == up.shape == down.T.shape == (shape.intermediate, shape.hidden)
        assert model.get_submodule(arch.module_name(model.config, k, "down")) is arch.projection(model, k, "down")


@pytest.mark.parametrize("family", FAMILIES)
def test_roles_are_where_the_forward_uses_them(family):
    """Semantics, not just shapes (this is what locates the rows of a fused module):
    zeroing v's rows silences attention (o_proj gets zeros); doubling up's rows doubles the
    FFN output (act(gate) * up is linear in up), doubling gate's does not."""
    model = tiny_model(family).double()
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    seen = {}
    arch.projection(model, 1, "o").register_forward_pre_hook(lambda m, a: seen.__setitem__("o_in", a[0]))
    arch.projection(model, 1, "down").register_forward_hook(lambda m, a, out: seen.__setitem__("ffn", out))

    def ffn_out_after(role, factor):
        with torch.no_grad():
            w = arch.role_weight(model, 1, role)
            saved = w.clone()
            w.mul_(factor)
            model(ids)
            w.copy_(saved)
        return seen["ffn"].clone()
    base = ffn_out_after("up", 1.0)
    assert seen["o_in"].abs().max() > 0
    torch.testing.assert_close(ffn_out_after("up", 2.0), 2 * base)
    assert not torch.allclose(ffn_out_after("gate", 2.0), 2 * base)
    ffn_out_after("v", 0.0)
    assert seen["o_in"].abs().max() == 0


def test_phi3_fused_rows_follow_its_split():
    config = tiny_config("phi3")  # q: 4 heads x 8, k and v: 2 x 8; gate, up: 48 each
    assert [arch.role_rows(config, r) for r in arch.ROLES] == [
        slice(0, 32), slice(32, 48), slice(48, 64), None, slice(0, 48), slice(48, 96), None]
    assert arch.fused_with(config, "k") == ("q", "k", "v")
    assert arch.role_rows(tiny_config("llama"), "q") is None


def test_granite_residual_multiplier_is_read():
    assert arch.residual_scale(tiny_config("granite")) == 0.5
    assert arch.residual_scale(tiny_config("llama")) == 1.0


def test_gemma_head_dim_is_read_from_the_config():
    shape = arch.shape_of(tiny_model("gemma3_text", head_dim=16).config)
    assert shape.head_dim == 16 and shape.head_dim * shape.n_heads != shape.hidden


def test_unknown_architecture_names_the_supported_ones():
    from transformers import GPT2Config
    with pytest.raises(arch.UnsupportedArchitectureError) as e:
        arch.shape_of(GPT2Config())
    for name in ("gpt2", *arch.ARCHITECTURES):
        assert name in str(e.value)


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe"])
def test_mixture_of_experts_is_refused_with_the_reason(family):
    with pytest.raises(arch.UnsupportedArchitectureError, match="mixture-of-experts.*routed"):
        arch.spec_for(tiny_config(family))


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="unknown role"):
        arch.projection(tiny_model(), 0, "ffn")
