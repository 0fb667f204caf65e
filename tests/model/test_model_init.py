"""Init schemes: formula values, empirical std of (truncated) normals, cutoff, determinism.

The schemes named after a reference are compared with the reference itself in
tests/reference/test_reference_init.py; here each formula is written out by hand.
"""

import dataclasses
import math

import pytest
import torch

from model import ModelConfig, Transformer, build, expected_std
from model.init import init_plan, init_weights

MID = ModelConfig(vocab_size=4096, d_model=512, n_layers=4, n_heads=8, n_kv_heads=4, mlp_hidden=1536,
                  max_seq_len=64, init_cutoff=3.0)
SCHEMES = ModelConfig.CHOICES["init"]


def truncated_std(std: float, c: float) -> float:
    """std of N(0, std^2) cut at +-c std: std * sqrt(1 - 2c phi(c) / (2 Phi(c) - 1))."""
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(c / math.sqrt(2))  # 2 Phi(c) - 1
    return std * math.sqrt(1 - 2 * c * phi / mass)


def tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    """A plan entry's tensor: a parameter or a view such as `blocks.0.attn.q_weight`."""
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module), attr)


@pytest.fixture(scope="module", params=SCHEMES)
def initialised(request):
    cfg = dataclasses.replace(MID, init=request.param)
    return cfg, build(cfg, generator=torch.Generator().manual_seed(0))


def test_empirical_std_cutoff_and_norms(initialised):
    cfg, model = initialised
    plan = init_plan(cfg)
    covered = sum(tensor(model, name).numel() for name in plan)
    params = dict(model.named_parameters())
    assert covered == sum(p.numel() for p in params.values() if p.ndim == 2)
    for name, draw in plan.items():
        t = tensor(model, name).detach().float()
        want = truncated_std(draw.std, 3.0) if draw.truncated else draw.std
        assert abs(t.std().item() / want - 1) < 0.05, (name, t.std().item(), want)
        if draw.truncated:
            assert t.abs().max().item() <= 3.0 * draw.std * (1 + 1e-6), name
        else:
            assert t.abs().max().item() > 3.5 * draw.std, name  # a plain normal has tails
    for name, p in params.items():
        if p.ndim == 1:
            assert torch.equal(p, torch.ones_like(p)), name  # norm weights


def test_scheme_names_are_the_config_choices():
    from model.init import SCHEMES as TABLE

    assert tuple(TABLE) == SCHEMES


def test_formula_values_by_hand():
    d, h, L, s = 512, 1536, 4, 0.02
    plan = {init: init_plan(dataclasses.replace(MID, init=init)) for init in SCHEMES}
    std = {init: {k: v.std for k, v in p.items()} for init, p in plan.items()}

    m = std["mitchell"]
    assert m["blocks.2.attn.o_proj.weight"] == pytest.approx(1 / math.sqrt(2 * d * 3))
    assert m["blocks.0.mlp.down_proj.weight"] == pytest.approx(1 / math.sqrt(2 * h * 1))
    assert m["blocks.3.mlp.down_proj.weight"] == pytest.approx(1 / math.sqrt(2 * h * 4))
    for name in ("embed.weight", "lm_head.weight", "blocks.1.attn.k_weight", "blocks.3.mlp.up_weight"):
        assert m[name] == pytest.approx(1 / math.sqrt(d)), name

    assert set(std["normal"].values()) == {s}

    fm = std["full_megatron"]
    assert fm["blocks.0.attn.o_proj.weight"] == fm["blocks.3.mlp.down_proj.weight"] == pytest.approx(
        s / math.sqrt(2 * L))
    assert fm["embed.weight"] == fm["blocks.2.mlp.up_weight"] == fm["blocks.1.attn.q_weight"] == s
    assert fm["lm_head.weight"] == pytest.approx(1 / math.sqrt(d))

    for init, depth in (("llama", lambda i: L), ("llama_depth", lambda i: i + 1)):
        ll = std[init]
        for i in range(L):
            for part in ("attn.o_proj.weight", "mlp.up_weight", "mlp.down_proj.weight"):
                assert ll[f"blocks.{i}.{part}"] == pytest.approx(s / math.sqrt(2 * depth(i))), (init, part)
            assert ll[f"blocks.{i}.mlp.gate_weight"] == ll[f"blocks.{i}.attn.v_weight"] == s
        assert plan[init]["embed.weight"].std == 1.0 and not plan[init]["embed.weight"].truncated
        assert ll["lm_head.weight"] == pytest.approx(1 / math.sqrt(d))

    fi = std["fan_in"]
    assert fi["blocks.1.mlp.down_proj.weight"] == pytest.approx(1 / math.sqrt(h))
    assert fi["blocks.1.attn.o_proj.weight"] == pytest.approx(1 / math.sqrt(8 * 64))
    assert fi["blocks.0.mlp.gate_weight"] == fi["blocks.0.attn.k_weight"] == pytest.approx(1 / math.sqrt(d))
    assert fi["embed.weight"] == 1.0 and not plan["fan_in"]["embed.weight"].truncated
    assert fi["lm_head.weight"] == pytest.approx(1 / math.sqrt(d))

    mg, md = std["megatron"], std["megatron_depth"]
    assert mg["blocks.0.attn.o_proj.weight"] == pytest.approx(s / math.sqrt(2 * L))
    assert md["blocks.2.mlp.down_proj.weight"] == pytest.approx(s / math.sqrt(6))
    assert mg["embed.weight"] == mg["lm_head.weight"] == s
    assert md["lm_head.weight"] == md["blocks.2.mlp.up_weight"] == s

    tied = expected_std(dataclasses.replace(MID, tie_embeddings=True))
    assert "lm_head.weight" not in tied


def test_fused_parts_with_different_stds_are_scaled_standard_draws():
    """llama gives gate and up different stds inside one fused matrix: one standard draw, each
    half scaled by its own std (the same standard draws as a scheme where they agree)."""
    cfg = dataclasses.replace(MID, vocab_size=256, d_model=64, n_heads=4, n_kv_heads=None,
                              mlp_hidden=128, init="llama")
    model = build(cfg, generator=torch.Generator().manual_seed(3))
    mlp = model.blocks[1].mlp
    gate_std, up_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
    assert mlp.gate_weight.abs().max() <= 3 * gate_std * (1 + 1e-6)
    assert mlp.up_weight.abs().max() <= 3 * up_std * (1 + 1e-6)
    assert mlp.up_weight.abs().max() > 2.5 * up_std
    standard = torch.cat([mlp.gate_weight / gate_std, mlp.up_weight / up_std])
    assert standard.abs().max() <= 3.0 * (1 + 1e-6)


@pytest.mark.parametrize("init", SCHEMES)
def test_same_seed_same_weights(init):
    cfg = dataclasses.replace(MID, vocab_size=256, d_model=64, n_heads=4, n_kv_heads=None,
                              mlp_hidden=128, init=init)
    a = build(cfg, generator=torch.Generator().manual_seed(7))
    b = build(cfg, generator=torch.Generator().manual_seed(7))
    c = build(cfg, generator=torch.Generator().manual_seed(8))
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(),
                                  c.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.ndim == 2:
            assert not torch.equal(pa, pc), name


def test_init_weights_resets_norms_and_tied_head():
    cfg = dataclasses.replace(MID, vocab_size=256, d_model=64, n_heads=4, n_kv_heads=None,
                              mlp_hidden=128, tie_embeddings=True, norm_type="layernorm")
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(5.0)
    init_weights(model, cfg, torch.Generator().manual_seed(0))
    assert model.lm_head.weight is model.embed.weight
    assert torch.equal(model.final_norm.weight, torch.ones(64))
    assert model.embed.weight.abs().max() <= 0.06 + 1e-6


def test_unset_mlp_hidden_rounds_as_olmo_core():
    """int(8 d / 3) rounded up to a multiple of 256 (OLMo-core's llama_like), by hand."""
    for d, hidden in ((128, 512), (256, 768), (512, 1536), (768, 2048), (4096, 11008)):
        assert dataclasses.replace(MID, d_model=d, n_heads=4, mlp_hidden=None).hidden == hidden
