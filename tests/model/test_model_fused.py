"""The hand-written forward/backward pairs of model/fused.py against autograd on the composite
formulas (fp32, 1e-6) and `gradcheck` (fp64, finite differences)."""

import pytest
import torch
import torch.nn.functional as F
from model_reference import rotate_half

from model.fused import rms_norm, rotary, swiglu
from model.rope import RotaryEmbedding


def _grads(fn, *inputs, seed=1):
    """Output and input grads of `fn` for a fixed random upstream gradient."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    out.backward(upstream)
    return out.detach(), [leaf.grad for leaf in leaves]


def _reference_rms(x, w, eps):
    xf = x.float()
    return (w.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@pytest.mark.parametrize("shape", [(3, 5, 16), (40, 8)])
def test_rms_norm_matches_composite_formula(shape):
    x, w = torch.randn(shape) * 3, torch.randn(shape[-1])
    out, (gx, gw) = _grads(lambda a, b: rms_norm(a, b, 1e-6), x, w)
    ref, (rx, rw) = _grads(lambda a, b: _reference_rms(a, b, 1e-6), x, w)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)


def test_rms_norm_on_a_strided_view_and_gradcheck():
    """QK-norm normalises slices of the fused qkv output: inputs need not be contiguous."""
    qkv = torch.randn(2, 3, 24, dtype=torch.float64)
    w = torch.randn(8, dtype=torch.float64)
    q = qkv[..., 8:16].detach().requires_grad_(True)
    w.requires_grad_(True)
    assert not q.is_contiguous()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (q, w))


def test_rms_norm_keeps_half_precision_dtype_and_weight_grad_dtype():
    x = torch.randn(4, 16).to(torch.bfloat16).requires_grad_(True)
    w = torch.randn(16, requires_grad=True)
    y = rms_norm(x, w, 1e-6)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert w.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), _reference_rms(x.detach().float(), w.detach(), 1e-6),
                               rtol=1e-2, atol=1e-2)


def _half_tables(rope, positions, seq_len):
    cos, sin = rope.tables(positions, seq_len)
    half = rope.head_dim // 2
    return cos[..., None, :half], sin[..., None, :half]


@pytest.mark.parametrize("per_row_positions", [False, True])
def test_rotary_matches_rotate_half_formula(per_row_positions):
    rope = RotaryEmbedding(16, 64, 10_000.0)
    b, t = 3, 10
    positions = (torch.randint(0, 64, (b, t)) if per_row_positions else None)
    x = torch.randn(b, t, 4, 16)
    cos, sin = rope.tables(positions, t)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    out, (gx,) = _grads(lambda a: rotary(a, *_half_tables(rope, positions, t)), x)
    ref, (rx,) = _grads(lambda a: a * cos + rotate_half(a) * sin, x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, rx, rtol=1e-6, atol=1e-6)


def test_rotary_gradcheck_and_norm_preservation():
    rope = RotaryEmbedding(8, 16, 500_000.0)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = _half_tables(rope, None, 5)
    assert torch.autograd.gradcheck(lambda a: rotary(a, cos, sin), (x,))
    # a rotation: every (x1[i], x2[i]) pair keeps its length
    torch.testing.assert_close(rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_swiglu_matches_composite_and_gradcheck():
    gate_up = torch.randn(3, 7, 24) * 2
    out, (g,) = _grads(swiglu, gate_up)
    ref, (r,) = _grads(lambda a: F.silu(a[..., :12]) * a[..., 12:], gate_up)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu, (x,))


def test_composite_forms_used_under_torch_compile_agree(monkeypatch):
    """Inside torch.compile the functions are their composite formulas: same values and grads."""
    rope = RotaryEmbedding(16, 32, 10_000.0)
    cos, sin = _half_tables(rope, None, 6)
    cases = [(lambda a, b: rms_norm(a, b, 1e-6), (torch.randn(2, 6, 16), torch.randn(16))),
             (lambda a: rotary(a, cos, sin), (torch.randn(2, 6, 3, 16),)),
             (swiglu, (torch.randn(2, 6, 20),))]
    for fn, inputs in cases:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
        out, grads = _grads(fn, *inputs)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        ref, ref_grads = _grads(fn, *inputs)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_bf16_inputs_keep_their_dtype_and_match_the_composite_formulas():
    """The GPU path's dtype handling (bf16 activations, fp32 tables), exercised on CPU."""
    rope = RotaryEmbedding(16, 32, 10_000.0)
    cos, sin = _half_tables(rope, None, 6)
    full_cos, full_sin = (t.unsqueeze(-2) for t in rope.tables(None, 6))
    x = torch.randn(2, 6, 3, 16).to(torch.bfloat16)
    out, (gx,) = _grads(lambda a: rotary(a, cos, sin), x)
    ref, (rx,) = _grads(lambda a: (a.float() * full_cos + rotate_half(a.float()) * full_sin)
                        .to(torch.bfloat16), x)
    assert out.dtype == gx.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same fp32 maths, one rounding
    torch.testing.assert_close(gx.float(), rx.float(), rtol=1e-2, atol=1e-2)
    gate_up = torch.randn(2, 6, 20).to(torch.bfloat16)
    out, (g,) = _grads(swiglu, gate_up)
    ref, (r,) = _grads(lambda a: F.silu(a[..., :10]) * a[..., 10:], gate_up)
    assert out.dtype == g.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=2e-2)


def test_rms_norm_without_torchs_fused_kernel(monkeypatch):
    """The fallback forward (a torch build without `_fused_rms_norm`) gives the same values."""
    import model.fused as fused

    x, w = torch.randn(5, 16) * 2, torch.randn(16)
    out, (gx, gw) = _grads(lambda a, b: rms_norm(a, b, 1e-6), x, w)
    monkeypatch.setattr(fused, "_FUSED_RMS", None)
    ref, (rx, rw) = _grads(lambda a, b: rms_norm(a, b, 1e-6), x, w)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, rx, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-6, atol=1e-6)
