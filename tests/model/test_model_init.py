"""Init schemes: formula values, empirical std of truncated normals, cutoff, determinism."""

import dataclasses
import math

import pytest
import torch

from model import ModelConfig, Transformer, build, expected_std
from model.init import init_weights

MID = ModelConfig(vocab_size=4096, d_model=512, n_layers=4, n_heads=8, mlp_hidden=1536,
                  max_seq_len=64, init_cutoff=3.0)
SCHEMES = ModelConfig.CHOICES["init"]


def truncated_std(std: float, c: float) -> float:
    """std of N(0, std^2) cut at +-c std: std * sqrt(1 - 2c phi(c) / (2 Phi(c) - 1))."""
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(c / math.sqrt(2))  # 2 Phi(c) - 1
    return std * math.sqrt(1 - 2 * c * phi / mass)


@pytest.fixture(scope="module", params=SCHEMES)
def initialised(request):
    cfg = dataclasses.replace(MID, init=request.param)
    return cfg, build(cfg, generator=torch.Generator().manual_seed(0))


def test_empirical_std_cutoff_and_norms(initialised):
    cfg, model = initialised
    stds = expected_std(cfg)
    params = dict(model.named_parameters())
    assert set(stds) == {n for n, p in params.items() if p.ndim == 2}
    for name, p in params.items():
        if name not in stds:
            assert torch.equal(p, torch.ones_like(p)), name  # norm weights
            continue
        std = stds[name]
        emp = p.float().std().item()
        assert abs(emp / truncated_std(std, 3.0) - 1) < 0.05, (name, emp, std)
        assert p.abs().max().item() <= 3.0 * std * (1 + 1e-6), name


def test_formula_values_by_hand():
    d, h, L = 512, 1536, 4
    mitchell = expected_std(dataclasses.replace(MID, init="mitchell"))
    assert mitchell["blocks.2.attn.o_proj.weight"] == pytest.approx(1 / math.sqrt(2 * 512 * 3))
    assert mitchell["blocks.0.mlp.down_proj.weight"] == pytest.approx(1 / math.sqrt(2 * h * 1))
    assert mitchell["blocks.3.mlp.down_proj.weight"] == pytest.approx(1 / math.sqrt(2 * h * 4))
    for name in ("embed.weight", "lm_head.weight", "blocks.1.attn.qkv_proj.weight",
                 "blocks.3.mlp.gate_up_proj.weight"):
        assert mitchell[name] == pytest.approx(1 / math.sqrt(d)), name

    normal = expected_std(dataclasses.replace(MID, init="normal", init_std=0.02))
    assert set(normal.values()) == {0.02}

    megatron = expected_std(dataclasses.replace(MID, init="megatron"))
    assert megatron["blocks.0.attn.o_proj.weight"] == pytest.approx(0.02 / math.sqrt(2 * L))
    assert megatron["blocks.3.mlp.down_proj.weight"] == pytest.approx(0.02 / math.sqrt(8))
    assert megatron["embed.weight"] == megatron["blocks.2.mlp.gate_up_proj.weight"] == 0.02

    llama = expected_std(dataclasses.replace(MID, init="llama_depth"))
    assert llama["blocks.0.attn.o_proj.weight"] == pytest.approx(0.02 / math.sqrt(2))
    assert llama["blocks.2.mlp.down_proj.weight"] == pytest.approx(0.02 / math.sqrt(6))
    assert llama["lm_head.weight"] == 0.02

    fan_in = expected_std(dataclasses.replace(MID, init="fan_in"))
    assert fan_in["blocks.1.mlp.down_proj.weight"] == pytest.approx(1 / math.sqrt(h))
    assert fan_in["blocks.1.attn.o_proj.weight"] == pytest.approx(1 / math.sqrt(d))
    assert fan_in["embed.weight"] == fan_in["lm_head.weight"] == pytest.approx(1 / math.sqrt(d))

    tied = expected_std(dataclasses.replace(MID, tie_embeddings=True))
    assert "lm_head.weight" not in tied


@pytest.mark.parametrize("init", SCHEMES)
def test_same_seed_same_weights(init):
    cfg = dataclasses.replace(MID, vocab_size=256, d_model=64, n_heads=4, mlp_hidden=128, init=init)
    a = build(cfg, generator=torch.Generator().manual_seed(7))
    b = build(cfg, generator=torch.Generator().manual_seed(7))
    c = build(cfg, generator=torch.Generator().manual_seed(8))
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(),
                                  c.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.ndim == 2:
            assert not torch.equal(pa, pc), name


def test_init_weights_resets_norms_and_tied_head():
    cfg = dataclasses.replace(MID, vocab_size=256, d_model=64, n_heads=4, mlp_hidden=128,
                              tie_embeddings=True, norm_type="layernorm")
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(5.0)
    init_weights(model, cfg, torch.Generator().manual_seed(0))
    assert model.lm_head.weight is model.embed.weight
    assert torch.equal(model.final_norm.weight, torch.ones(64))
    assert model.embed.weight.abs().max() <= 0.06 + 1e-6
