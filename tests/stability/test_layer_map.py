"""The probes find a model's layers through its layer map: ours describes the Transformer, and a
map with other paths sees the same layers in a model laid out differently."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from model import build, model_preset
from stability.config import ProbesConfig
from stability.optim import clip_grad_norm_
from stability.probes.layer_map import TRANSFORMER, LayerMap, Location, layer_map_for
from stability.probes.layout import param_layout
from stability.probes.session import ProbeSession
from stability.probes.stats import attention_stats, grad_stats


class Wrapped(nn.Module):
    """Our Transformer one level down, as a foreign model's paths would differ."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


WRAPPED = LayerMap("wrapped", blocks="net.blocks", attn="attn", mlp="mlp", embed=("net.embed",),
                   head=("net.lm_head",), n_heads="net.cfg.n_heads",
                   trunk=lambda m, ids, doc: m.net.features(ids, doc),
                   qk=lambda attn, x: attn.project_qk(x))


def _model_with_grads():
    model = build(model_preset("olmo2-tiny"), generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    model(ids).logsumexp(-1).mean().backward()
    return model, ids


def test_our_map_describes_the_transformer_and_places_every_part():
    model, _ = _model_with_grads()
    assert layer_map_for(model) is TRANSFORMER
    assert TRANSFORMER.heads_of(model) == model.cfg.n_heads
    where = {n: TRANSFORMER.locate(n) for n, _ in model.named_parameters()}
    assert where["embed.weight"] == Location(None, "embed")
    assert where["final_norm.weight"] == Location(None, "other")
    assert where["blocks.2.attn.qkv_proj.weight"] == Location(2, "attn")
    assert where["blocks.2.attn.q_norm.weight"] == Location(2, "norm")  # QK-norm is a norm
    assert where["blocks.3.mlp.down_proj.weight"] == Location(3, "mlp")
    assert where["blocks.0.mlp_norm.weight"] == Location(0, "norm")


def test_a_model_no_map_describes_is_refused_by_name():
    with pytest.raises(ValueError, match="no layer map describes Linear .*pass a LayerMap"):
        layer_map_for(nn.Linear(2, 2))
    model, _ = _model_with_grads()
    assert not WRAPPED.describes(model) and not TRANSFORMER.describes(Wrapped(model))


def test_another_map_sees_the_same_layers_in_a_wrapped_model():
    model, ids = _model_with_grads()
    wrapped = Wrapped(model)
    plain, other = param_layout(model), param_layout(wrapped, WRAPPED)
    assert other.names == ["net." + n for n in plain.names]
    for field in ("layer_index", "part_index", "layer_numel", "part_numel"):
        assert torch.equal(getattr(other, field), getattr(plain, field)), field
    _, _, norms = clip_grad_norm_(plain.params, 0.0)
    mine, theirs = grad_stats(plain, norms), grad_stats(other, norms)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    a, b = attention_stats(model, ids, None, [1, 3]), attention_stats(wrapped, ids, None, [1, 3], WRAPPED)
    assert all(torch.equal(a[k], b[k]) for k in a)
    session = ProbeSession(wrapped, ProbesConfig(), layer_map=WRAPPED)
    assert session.params == plain.params and session.attn_spec.width == 5 * 4 * model.cfg.n_heads


def test_a_map_without_q_k_has_no_attention_probe():
    model, ids = _model_with_grads()
    blind = dataclasses.replace(TRANSFORMER, trunk=None, qk=None)
    with pytest.raises(ValueError, match="no q, k access"):
        attention_stats(model, ids, None, layer_map=blind)
