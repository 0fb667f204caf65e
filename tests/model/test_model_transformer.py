"""Presets, recipes, the full Transformer vs reference, and finite gradients for every toggle."""

import dataclasses

import pytest
import torch
from model_reference import randomize_norms, ref_transformer

from model import (
    MODEL_PRESETS,
    RECIPE_KNOBS,
    ConfigError,
    ModelConfig,
    Transformer,
    build,
    model_preset,
    recipe_of,
)

TINY = dataclasses.replace(model_preset("olmo2-tiny"), attention="eager")


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_presets_validate_and_name_their_recipe(name):
    cfg = model_preset(name)
    cfg.validate()
    assert recipe_of(cfg) == name.split("-")[0]
    assert not cfg.tie_embeddings
    assert cfg is not MODEL_PRESETS[name] and cfg == MODEL_PRESETS[name]


def test_preset_shapes_and_copies():
    tiny = build(model_preset("olmo2-tiny"))
    assert 0.5e6 <= tiny.num_params() <= 2e6
    seven = model_preset("olmo2-7B")
    assert (seven.d_model, seven.n_layers, seven.n_heads, seven.hidden) == (4096, 32, 32, 11008)
    one = model_preset("olmo2-1B_v2")
    assert (one.d_model, one.n_layers, one.hidden, one.vocab_size) == (2048, 16, 8192, 100352)
    with pytest.raises(ConfigError, match="'olmo2-1b' is now 'olmo2-1B_v2'"):
        model_preset("olmo2-1b")
    with pytest.raises(ConfigError, match="did you mean 'olmo2-190M'"):
        model_preset("olmo2-190m")
    cfg = model_preset("olmo2-tiny")
    cfg.d_model = 7
    assert model_preset("olmo2-tiny").d_model == 128
    with pytest.raises(ConfigError, match="olmo2-tiny"):
        model_preset("olmo3-tiny")


def test_recipe_knobs_and_custom():
    old = model_preset("olmo0424-small")
    assert (old.norm_type, old.block, old.qk_norm, old.clip_qkv, old.init) == (
        "layernorm_nonparam", "pre_norm", "none", 8.0, "mitchell")
    assert (old.norm_eps, old.rope_theta) == (1e-5, 1e4)
    new = model_preset("olmo2-small")
    assert {k: getattr(new, k) for k in RECIPE_KNOBS["olmo2"]} == RECIPE_KNOBS["olmo2"]
    assert recipe_of(dataclasses.replace(new, qk_norm="per_head")) == "custom"
    assert recipe_of(dataclasses.replace(new, init_std=0.01)) == "custom"
    assert recipe_of(dataclasses.replace(old, init_std=0.01)) == "olmo0424"  # mitchell ignores it


@pytest.mark.parametrize("tie", [False, True])
def test_transformer_matches_reference(tie):
    cfg = dataclasses.replace(TINY, n_layers=2, tie_embeddings=tie, n_kv_heads=2,
                              block="peri_norm", norm_type="layernorm", qk_norm="per_head")
    model = build(cfg, generator=torch.Generator().manual_seed(0))
    randomize_norms(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    doc_ids = torch.tensor([[0] * 6 + [1] * 4, [2] * 10])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).double(), ref_transformer(ids, model),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(ids, doc_ids).double(),
                                   ref_transformer(ids, model, doc_ids), atol=1e-5, rtol=1e-5)
    assert (model.lm_head.weight is model.embed.weight) == tie


def test_return_hidden_and_sizes():
    model = build(TINY)
    ids = torch.randint(0, 1024, (2, 16))
    logits, hidden = model(ids, return_hidden=True)
    assert logits.shape == (2, 16, 1024) and len(hidden) == TINY.n_layers
    assert all(h.shape == (2, 16, 128) for h in hidden)
    torch.testing.assert_close(model.lm_head(model.final_norm(hidden[-1])), logits)
    with pytest.raises(ValueError, match="max_seq_len|sequence length"):
        model(torch.zeros(1, 257, dtype=torch.long))


def test_num_params_and_flops():
    cfg = TINY
    model = build(cfg)
    d, v, h, L = 128, 1024, 384, 4
    per_layer = 4 * d * d + 3 * d * h + 4 * d  # q,k,v,o + SwiGLU + 2 block norms + q/k norms
    total = 2 * v * d + L * per_layer + d
    assert model.num_params() == total
    assert model.num_params(exclude_embeddings=True) == total - v * d
    assert model.flops_per_token(256) == 6 * (total - v * d) + 6 * L * d * 256
    tied = build(dataclasses.replace(cfg, tie_embeddings=True))
    assert tied.num_params() == total - v * d
    assert tied.flops_per_token(256) == model.flops_per_token(256)
    assert Transformer(cfg).cfg is cfg


def _finite_step(cfg: ModelConfig):
    model = build(cfg, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    logits = model(ids, torch.tensor([[0] * 9 + [1] * 7] * 2))
    targets = ids.roll(-1, 1).flatten()
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


QK = ModelConfig.CHOICES["qk_norm"]


@pytest.mark.parametrize("norm_type", ModelConfig.CHOICES["norm_type"])
@pytest.mark.parametrize("block", ModelConfig.CHOICES["block"])
def test_finite_grads_block_norm(block, norm_type):
    qk = QK[(len(block) + len(norm_type)) % 3]  # cycle QK-norm modes across the grid
    _finite_step(dataclasses.replace(TINY, block=block, norm_type=norm_type, qk_norm=qk))


@pytest.mark.parametrize("clip", [None, 8.0])
@pytest.mark.parametrize("qk_norm", QK)
def test_finite_grads_qk(qk_norm, clip):
    _finite_step(dataclasses.replace(TINY, qk_norm=qk_norm, clip_qkv=clip, n_kv_heads=2))


@pytest.mark.parametrize("init", ModelConfig.CHOICES["init"])
@pytest.mark.parametrize("recipe", ["olmo2", "olmo0424"])
def test_finite_grads_init(recipe, init):
    _finite_step(dataclasses.replace(model_preset(f"{recipe}-tiny"), init=init, attention="sdpa"))
