"""Attention kernels (eager reference, torch SDPA, xFormers) and backend selection.

Every kernel takes q [B, T, H, hd] and k, v [B, T, Hkv, hd] (Hkv divides H) plus optional
`doc_ids` [B, T]: position t may attend to s iff s <= t and doc_ids[b, s] == doc_ids[b, t].
They return [B, T, H, hd] in q's dtype.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from model.config import ModelConfig, check_attention

BACKENDS = ModelConfig.CHOICES["attention"]


@functools.cache
def xformers_available() -> bool:
    """True when `xformers.ops` imports (imported lazily: it warns loudly on CPU-only hosts)."""
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def check_attention_backend(name: str, device_type: str) -> None:
    """Raise `ConfigError` if backend `name` cannot run on `device_type` ("cpu", "cuda", ...)."""
    check_attention(name, device_type)


def resolve_attention_backend(name: str, device_type: str) -> str:
    """The concrete backend for `name`: `auto` is xformers on CUDA when importable, else sdpa."""
    check_attention_backend(name, device_type)
    if name == "auto":
        return "xformers" if device_type == "cuda" and xformers_available() else "sdpa"
    return name


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, T, Hkv, hd] -> [B, T, Hkv * n_rep, hd]; kv head j serves q heads j*n_rep..."""
    if n_rep == 1:
        return x
    b, t, h, d = x.shape
    return x[:, :, :, None, :].expand(b, t, h, n_rep, d).reshape(b, t, h * n_rep, d)


def attention_mask(
    seq_len: int, doc_ids: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Boolean mask, True = may attend: [T, T] causal, or [B, 1, T, T] causal & same document."""
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    if doc_ids is None:
        return causal
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B, T, T]
    return (same_doc & causal)[:, None]


def attention_logits(
    q: torch.Tensor, k: torch.Tensor, doc_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """fp32 logits q.k/sqrt(hd) as [B, H, T, T], masked-out entries -inf."""
    k = repeat_kv(k, q.shape[2] // k.shape[2])
    logits = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) / math.sqrt(q.shape[-1])
    mask = attention_mask(q.shape[1], doc_ids, q.device)
    return logits.masked_fill(~mask, float("-inf"))


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference: softmax(QK^T/sqrt(hd) + mask) V, all in fp32."""
    probs = attention_logits(q, k, doc_ids).softmax(dim=-1)
    v = repeat_kv(v, q.shape[2] // v.shape[2])
    return torch.einsum("bhts,bshd->bthd", probs, v.float()).to(q.dtype)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """torch `scaled_dot_product_attention`: is_causal without documents, a bool mask with."""
    n_rep = q.shape[2] // k.shape[2]
    q, k, v = (x.transpose(1, 2) for x in (q, repeat_kv(k, n_rep), repeat_kv(v, n_rep)))
    if doc_ids is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        mask = attention_mask(q.shape[2], doc_ids, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)


def document_seqlens(doc_ids: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal doc ids, row by row, as if the batch were one long row.

    Each document is assumed to be one contiguous run (as in packed data); needs a host sync.
    """
    b, t = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = starts.flatten().nonzero().flatten()
    ends = torch.cat((idx[1:], idx.new_tensor([b * t])))
    return (ends - idx).tolist()


def xformers_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """xFormers `memory_efficient_attention` ([B, M, H, K] layout); CUDA only.

    Documents use `BlockDiagonalCausalMask.from_seqlens` with the batch flattened to one row.
    """
    import xformers.ops as xops
    from xformers.ops.fmha.attn_bias import BlockDiagonalCausalMask

    n_rep = q.shape[2] // k.shape[2]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if doc_ids is None:
        return xops.memory_efficient_attention(q, k, v, attn_bias=xops.LowerTriangularMask())
    b, t, h, d = q.shape
    bias = BlockDiagonalCausalMask.from_seqlens(document_seqlens(doc_ids), device=q.device)
    flat = [x.reshape(1, b * t, h, d) for x in (q, k, v)]
    return xops.memory_efficient_attention(*flat, attn_bias=bias).reshape(b, t, h, d)


KERNELS = {"eager": eager_attention, "sdpa": sdpa_attention, "xformers": xformers_attention}


def attend(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the kernel that `backend` (a `ModelConfig.attention` value) resolves to."""
    return KERNELS[resolve_attention_backend(backend, q.device.type)](q, k, v, doc_ids)
