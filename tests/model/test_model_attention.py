"""Attention: QK-norm, clip_qkv, GQA, backends and document masking vs explicit references."""

import dataclasses

import pytest
import torch
from model_reference import randomize_norms, ref_attention, ref_qkv

from model import ConfigError, ModelConfig, build, check_attention_backend
from model.attention import Attention
from model.attention_backends import (
    attention_mask,
    document_seqlens,
    eager_attention,
    resolve_attention_backend,
    sdpa_attention,
)

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, mlp_hidden=48, max_seq_len=32,
                  attention="eager", norm_eps=1e-8)
DOCS = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2], [5, 5, 5, 5, 5, 3, 3, 3, 3, 3, 3, 3]])


def _attention(cfg: ModelConfig, std: float = 0.3, seed: int = 0) -> Attention:
    attn = Attention(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attn.parameters():
            if p.ndim == 2:
                p.normal_(0, std, generator=g)
    return attn


@pytest.mark.parametrize("qk_norm", ["none", "full", "per_head"])
def test_qk_norm_weight_shapes(qk_norm):
    cfg = dataclasses.replace(CFG, qk_norm=qk_norm, n_kv_heads=2)
    attn = Attention(cfg)
    if qk_norm == "none":
        assert attn.q_norm is None and attn.k_norm is None
    else:
        width_q, width_k = (32, 16) if qk_norm == "full" else (8, 8)
        assert attn.q_norm.weight.shape == (width_q,) and attn.k_norm.weight.shape == (width_k,)
    assert attn.k_weight.shape == (16, 32) and attn.qkv_proj.bias is None


@pytest.mark.parametrize("norm_type", ["rms", "layernorm"])
@pytest.mark.parametrize("qk_norm", ["none", "full", "per_head"])
def test_qk_norm_effect(qk_norm, norm_type):
    """Unit-weight QK-norm: RMS 1 per head (per_head) or over the width (full); RoPE keeps it."""
    cfg = dataclasses.replace(CFG, qk_norm=qk_norm, norm_type=norm_type)
    attn = _attention(cfg, std=1.0)
    x = torch.randn(2, 12, 32)
    q, k = attn.project_qk(x)
    per_head_rms = q.pow(2).mean(-1).sqrt()  # [B, T, H]
    width_rms = q.flatten(2).pow(2).mean(-1).sqrt()  # [B, T]
    if qk_norm == "per_head":
        torch.testing.assert_close(per_head_rms, torch.ones_like(per_head_rms), atol=1e-4, rtol=0)
    elif qk_norm == "full":
        torch.testing.assert_close(width_rms, torch.ones_like(width_rms), atol=1e-4, rtol=0)
        assert (per_head_rms - 1).abs().max() > 0.05  # heads are not individually normalised
    else:
        assert (width_rms - 1).abs().max() > 0.5  # projections with std 1 weights: RMS ~ sqrt(32)


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("qk_norm", ["none", "full", "per_head"])
def test_attention_matches_reference(qk_norm, kv_heads, clip):
    cfg = dataclasses.replace(CFG, qk_norm=qk_norm, n_kv_heads=kv_heads, clip_qkv=clip,
                              norm_type="rms", norm_eps=1e-6, rope_theta=10_000.0)
    attn = _attention(cfg)
    randomize_norms(attn)
    x = torch.randn(2, 12, 32)
    q, k = attn.project_qk(x)
    q_ref, k_ref, _ = ref_qkv(x, attn, cfg)
    torch.testing.assert_close(q.double(), q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k.double(), k_ref, atol=1e-5, rtol=1e-5)
    for backend in ("eager", "sdpa"):
        attn.backend = backend
        for doc_ids in (None, DOCS):
            out, ref = attn(x, doc_ids).double(), ref_attention(x, attn, cfg, doc_ids)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_clip_qkv_clamps_projections():
    cfg = dataclasses.replace(CFG, qk_norm="none", clip_qkv=2.0)
    attn = _attention(cfg, std=10.0)
    with torch.no_grad():
        attn.o_proj.weight.div_(100)  # keep the output O(1) for an fp32 comparison
    x = torch.randn(2, 12, 32)
    q, k, v = attn.project_qkv(x)
    assert v.abs().max() == 2.0  # v is not rotated: exactly at the bound
    # q, k are rotated after the clamp: each rotated pair has norm <= sqrt(2) * c
    for t in (q, k):
        half = t.shape[-1] // 2
        pair_norm = (t[..., :half] ** 2 + t[..., half:] ** 2).sqrt()
        assert pair_norm.max() <= 2.0 * 2**0.5 + 1e-5
    q_ref, _, v_ref = ref_qkv(x, attn, cfg)
    assert_close_scaled(q.double(), q_ref)
    assert_close_scaled(v.double(), v_ref)
    assert_close_scaled(attn(x).double(), ref_attention(x, attn, cfg))

    unclipped = _attention(dataclasses.replace(cfg, clip_qkv=None), std=10.0)
    assert unclipped.project_qkv(x)[2].abs().max() > 10.0


def test_attention_logits_probe():
    cfg = dataclasses.replace(CFG, qk_norm="per_head", n_kv_heads=2)
    attn = _attention(cfg)
    x = torch.randn(2, 12, 32)
    logits = attn.logits(x, DOCS)
    q, k, _ = ref_qkv(x, attn, cfg)
    k = k.repeat_interleave(2, dim=2)
    expected = torch.einsum("bthd,bshd->bhts", q, k) / 8**0.5
    finite = torch.isfinite(logits)
    torch.testing.assert_close(logits[finite].double(), expected[finite], atol=1e-5, rtol=1e-5)
    assert not finite[0, :, 3, 2].any() and finite[0, :, 3, 3].all()  # other doc / same doc
    assert not finite[0, :, 0, 1].any()  # future


def assert_close_scaled(actual, expected, tol=1e-5):
    """max |actual - expected| <= tol * max(1, max |expected|): tol relative to the scale."""
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= tol * scale


def _grads(model, x, backend, doc_ids):
    for module in model.modules():
        if isinstance(module, Attention):
            module.backend = backend
    x = x.clone().requires_grad_(True)
    out = model(x, doc_ids) if doc_ids is not None else model(x)
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("docs", [False, True])
def test_eager_equals_sdpa_with_gradients(kv_heads, docs):
    cfg = dataclasses.replace(CFG, n_kv_heads=kv_heads)
    attn = _attention(cfg)
    randomize_norms(attn)
    x = torch.randn(2, 12, 32)
    doc_ids = DOCS if docs else None
    out_e, dx_e, g_e = _grads(attn, x, "eager", doc_ids)
    out_s, dx_s, g_s = _grads(attn, x, "sdpa", doc_ids)
    torch.testing.assert_close(out_s, out_e, atol=1e-5, rtol=1e-5)
    assert_close_scaled(dx_s, dx_e)
    for name in g_e:
        assert_close_scaled(g_s[name], g_e[name])


@pytest.mark.parametrize("docs", [False, True])
def test_eager_equals_sdpa_full_model(docs):
    cfg = dataclasses.replace(CFG, n_kv_heads=2, qk_norm="per_head")
    model = build(cfg, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 64, (2, 12))
    doc_ids = DOCS if docs else None

    def run(backend):
        for module in model.modules():
            if isinstance(module, Attention):
                module.backend = backend
        logits = model(ids, doc_ids)
        (logits * torch.linspace(-1, 1, logits.numel()).reshape(logits.shape)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return logits.detach(), grads

    (le, ge), (ls, gs) = run("eager"), run("sdpa")
    torch.testing.assert_close(ls, le, atol=1e-5, rtol=1e-5)
    for name in ge:  # includes embed.weight: gradients w.r.t. the input embeddings
        assert_close_scaled(gs[name], ge[name])


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_document_mask_isolates_documents(backend):
    cfg = dataclasses.replace(CFG, attention=backend)
    model = build(cfg, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 12))
    changed = ids.clone()
    changed[0, :3] = (ids[0, :3] + 1) % 64  # tokens of doc 0, row 0
    changed[1, :5] = (ids[1, :5] + 7) % 64  # doc 5, row 1
    with torch.no_grad():
        a, b = model(ids, DOCS), model(changed, DOCS)
        c, d = model(ids), model(changed)
    torch.testing.assert_close(a[0, 3:], b[0, 3:], atol=0, rtol=0)
    torch.testing.assert_close(a[1, 5:], b[1, 5:], atol=0, rtol=0)
    assert not torch.allclose(a[0, :3], b[0, :3])
    assert not torch.allclose(c[0, 3:], d[0, 3:])  # without doc_ids the change leaks


def test_backend_kernels_direct_gqa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 12, 4, 8), torch.randn(2, 12, 2, 8), torch.randn(2, 12, 2, 8)
    for docs in (None, DOCS):
        torch.testing.assert_close(sdpa_attention(q, k, v, docs), eager_attention(q, k, v, docs),
                                   atol=1e-5, rtol=1e-5)


def test_document_seqlens():
    assert document_seqlens(DOCS) == [3, 4, 5, 5, 7]
    assert document_seqlens(torch.zeros(3, 4, dtype=torch.long)) == [4, 4, 4]


def test_xformers_document_bias_matches_our_mask():
    """The block-diagonal bias built for xformers allows exactly our causal same-document pairs."""
    attn_bias = pytest.importorskip("xformers.ops.fmha.attn_bias")  # lazy: warns on CPU hosts
    bias = attn_bias.BlockDiagonalCausalMask.from_seqlens(
        document_seqlens(DOCS), device=torch.device("cpu")
    )
    allowed = bias.materialize((24, 24)) == 0
    ours = attention_mask(12, DOCS, torch.device("cpu"))[:, 0]
    assert torch.equal(allowed, torch.block_diag(ours[0], ours[1]))


def test_backend_checks_on_cpu():
    with pytest.raises(ConfigError, match=r"^model\.attention: 'xformers' needs a CUDA device"):
        check_attention_backend("xformers", "cpu")
    with pytest.raises(ConfigError, match="model.attention"):
        check_attention_backend("flash9", "cpu")
    for name in ("auto", "sdpa", "eager"):
        check_attention_backend(name, "cpu")
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("eager", "cpu") == "eager"
    with pytest.raises(ConfigError, match="model.attention"):
        build(dataclasses.replace(CFG, attention="xformers"), device="cpu")
    attn = _attention(dataclasses.replace(CFG, attention="xformers"))
    with pytest.raises(ConfigError, match="model.attention"):
        attn(torch.randn(1, 4, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("docs", [False, True])
def test_xformers_equals_eager_on_cuda(docs):
    pytest.importorskip("xformers.ops")
    cfg = dataclasses.replace(CFG, n_kv_heads=2)
    attn = _attention(cfg).cuda()
    x = torch.randn(2, 12, 32, device="cuda")
    doc_ids = DOCS.cuda() if docs else None
    assert resolve_attention_backend("auto", "cuda") == "xformers"
    out_e, dx_e, g_e = _grads(attn, x, "eager", doc_ids)
    out_x, dx_x, g_x = _grads(attn, x, "xformers", doc_ids)
    torch.testing.assert_close(out_x, out_e, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dx_x, dx_e, atol=1e-4, rtol=1e-4)
    for name in g_e:
        torch.testing.assert_close(g_x[name], g_e[name], atol=1e-4, rtol=1e-4)
