"""Independent reference maths for the model tests: plain tensor ops, no calls into `model`.

Each function takes the weights of a module under test and recomputes its output from the
formulas in docs/reference.md section 1 (written out here, not imported).
"""

from __future__ import annotations

import math

import torch


def ref_norm(x: torch.Tensor, norm_type: str, weight: torch.Tensor | None, eps: float):
    """rms: w * x / sqrt(mean(x^2) + eps); layernorm(_nonparam): (x - mu) / sqrt(var + eps) [*w]."""
    x = x.double()
    if norm_type == "rms":
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    else:
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps)
    if norm_type == "layernorm_nonparam":
        assert weight is None
        return y
    return y * weight.double()


def ref_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [B, T, H, hd]; pairs (i, i + hd/2) rotated by angle t * theta^(-2i/hd)."""
    hd = x.shape[-1]
    half = hd // 2
    out = torch.empty_like(x, dtype=torch.float64)
    t = torch.arange(x.shape[1], dtype=torch.float64)[None, :, None]
    for i in range(half):
        angle = t * theta ** (-2.0 * i / hd)
        a, b = x[..., i].double(), x[..., i + half].double()
        out[..., i] = a * torch.cos(angle) - b * torch.sin(angle)
        out[..., i + half] = b * torch.cos(angle) + a * torch.sin(angle)
    return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1], halves over the last dim (RoPE as x cos + rotate_half(x) sin)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def ref_mask(batch: int, seq_len: int, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """[B, T, T] bool: t may see s iff s <= t and (no docs or same document)."""
    mask = torch.zeros(batch, seq_len, seq_len, dtype=torch.bool)
    for b in range(batch):
        for t in range(seq_len):
            for s in range(t + 1):
                mask[b, t, s] = doc_ids is None or bool(doc_ids[b, s] == doc_ids[b, t])
    return mask


def ref_qkv(x, attn, cfg):
    """q [B, T, H, hd], k, v [B, T, Hkv, hd] in float64: project, clip, qk-norm, RoPE."""
    b, t, _ = x.shape
    hd, h, hkv = cfg.d_model // cfg.n_heads, cfg.n_heads, cfg.kv_heads
    x = x.double()
    q = x @ attn.q_weight.double().T
    k = x @ attn.k_weight.double().T
    v = x @ attn.v_weight.double().T
    if cfg.clip_qkv is not None:
        c = cfg.clip_qkv
        q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
    eps = cfg.norm_eps
    qw = getattr(attn.q_norm, "weight", None)
    kw = getattr(attn.k_norm, "weight", None)
    if cfg.qk_norm == "full":
        q, k = ref_norm(q, cfg.norm_type, qw, eps), ref_norm(k, cfg.norm_type, kw, eps)
    q, k, v = q.reshape(b, t, h, hd), k.reshape(b, t, hkv, hd), v.reshape(b, t, hkv, hd)
    if cfg.qk_norm == "per_head":
        q, k = ref_norm(q, cfg.norm_type, qw, eps), ref_norm(k, cfg.norm_type, kw, eps)
    return ref_rope(q, cfg.rope_theta), ref_rope(k, cfg.rope_theta), v


def ref_attention(x, attn, cfg, doc_ids=None) -> torch.Tensor:
    """Attention sublayer output [B, T, d] (float64); q head j uses kv head j // (H / Hkv)."""
    b, t, _ = x.shape
    q, k, v = ref_qkv(x, attn, cfg)
    group = cfg.n_heads // cfg.kv_heads
    mask = ref_mask(b, t, doc_ids)
    heads = []
    for j in range(cfg.n_heads):
        kj, vj = k[:, :, j // group], v[:, :, j // group]
        scores = q[:, :, j] @ kj.transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, T, T]
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.exp(scores - scores.amax(-1, keepdim=True))
        probs = probs / probs.sum(-1, keepdim=True)
        heads.append(probs @ vj)
    out = torch.cat(heads, dim=-1)
    return out @ attn.o_proj.weight.double().T


def ref_mlp(x, mlp) -> torch.Tensor:
    """down(silu(gate x) * up x), silu(g) = g * sigmoid(g)."""
    x = x.double()
    g = x @ mlp.gate_weight.double().T
    u = x @ mlp.up_weight.double().T
    return (g / (1 + torch.exp(-g)) * u) @ mlp.down_proj.weight.double().T


def ref_block(x, block, cfg, doc_ids=None) -> torch.Tensor:
    """One block, written out for each placement."""
    def n(module, y):
        return ref_norm(y, cfg.norm_type, getattr(module, "weight", None), cfg.norm_eps)

    def attn(y):
        return ref_attention(y, block.attn, cfg, doc_ids)

    def mlp(y):
        return ref_mlp(y, block.mlp)

    x = x.double()
    if cfg.block == "pre_norm":
        h = x + attn(n(block.attn_norm, x))
        return h + mlp(n(block.mlp_norm, h))
    if cfg.block == "post_norm":
        h = n(block.attn_norm, x + attn(x))
        return n(block.mlp_norm, h + mlp(h))
    if cfg.block == "reordered_norm":
        h = x + n(block.attn_norm, attn(x))
        return h + n(block.mlp_norm, mlp(h))
    assert cfg.block == "peri_norm"
    h = x + n(block.attn_norm, attn(n(block.attn_in_norm, x)))
    return h + n(block.mlp_norm, mlp(n(block.mlp_in_norm, h)))


def ref_transformer(input_ids, model, doc_ids=None) -> torch.Tensor:
    """Logits: embedding lookup, blocks, final norm, head (float64)."""
    cfg = model.cfg
    x = model.embed.weight.double()[input_ids]
    for block in model.blocks:
        x = ref_block(x, block, cfg, doc_ids)
    x = ref_norm(x, cfg.norm_type, getattr(model.final_norm, "weight", None), cfg.norm_eps)
    return x @ model.lm_head.weight.double().T


@torch.no_grad()
def randomize_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every 1-d parameter (norm scale) non-unit values in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.ndim == 1:
            p.copy_(0.5 + torch.rand(p.shape, generator=g))
