"""Norms and RoPE against explicit formulas."""

import math

import pytest
import torch
from model_reference import ref_norm, ref_rope

from model.config import ConfigError
from model.norms import LayerNorm, RMSNorm, build_norm
from model.rope import RotaryEmbedding


@pytest.mark.parametrize("norm_type", ["rms", "layernorm", "layernorm_nonparam"])
def test_norm_matches_formula(norm_type):
    torch.manual_seed(0)
    norm = build_norm(norm_type, 32, 1e-5)
    if norm_type != "layernorm_nonparam":
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 32) * 4 + 1
    weight = getattr(norm, "weight", None)
    expected = ref_norm(x, norm_type, weight, 1e-5)
    torch.testing.assert_close(norm(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_norm_parameters():
    assert isinstance(build_norm("rms", 8, 1e-6), RMSNorm)
    assert [p.shape for p in build_norm("rms", 8, 1e-6).parameters()] == [torch.Size([8])]
    assert [p.shape for p in build_norm("layernorm", 8, 1e-6).parameters()] == [torch.Size([8])]
    nonparam = build_norm("layernorm_nonparam", 8, 1e-6)
    assert isinstance(nonparam, LayerNorm) and list(nonparam.parameters()) == []
    with pytest.raises(ConfigError, match="model.norm_type"):
        build_norm("batchnorm", 8, 1e-6)


@pytest.mark.parametrize("norm_type", ["rms", "layernorm", "layernorm_nonparam"])
def test_norm_computes_in_fp32_and_keeps_dtype(norm_type):
    torch.manual_seed(0)
    x = torch.randn(4, 64).bfloat16()
    y = build_norm(norm_type, 64, 1e-6)(x)
    assert y.dtype == torch.bfloat16
    weight = None if norm_type == "layernorm_nonparam" else torch.ones(64)
    expected = ref_norm(x.float(), norm_type, weight, 1e-6)
    torch.testing.assert_close(y.float(), expected.float(), atol=0, rtol=2**-8)  # bf16 rounding


def test_rope_matches_explicit_formula():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64, theta=10_000.0)
    x = torch.randn(2, 20, 3, 16)
    torch.testing.assert_close(rope(x).double(), ref_rope(x, 10_000.0), atol=1e-5, rtol=1e-5)
    assert rope.cos.dtype == torch.float32 and rope.cos.shape == (64, 16)
    assert "cos" not in rope.state_dict()  # non-persistent


def test_rope_is_relative_and_theta_matters():
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    rope = RotaryEmbedding(16, 32, 500_000.0)

    def at(v, pos):  # place v at position pos of a [1, T, 1, hd] sequence
        seq = torch.zeros(1, pos + 1, 1, 16)
        seq[0, pos, 0] = v
        return rope(seq)[0, pos, 0]

    assert math.isclose(at(q, 7) @ at(k, 3), at(q, 14) @ at(k, 10), rel_tol=1e-4)
    other = RotaryEmbedding(16, 32, 10_000.0)
    assert not torch.allclose(rope.cos, other.cos)


def test_rope_tables_survive_dtype_cast():
    rope = RotaryEmbedding(8, 16, 10_000.0)
    ref = rope.cos.clone()
    rope.to(torch.bfloat16)
    x = torch.randn(1, 16, 2, 8)
    rope(x)
    assert rope.cos.dtype == torch.float32 and torch.equal(rope.cos, ref)
