"""q and k as Hugging Face decoders attend with them, for the attention-logit and entropy probe.

The probe (`stability.probes.stats.attention_stats`) runs a layer map's `trunk` with a forward
pre-hook on every attention module that keeps its first positional input, then asks `qk` for
that module's q and k. HF decoder layers call their attention with keywords and pass the rotary
embeddings alongside, so the trunk here first moves `hidden_states` into the positional slot
(a pre-hook placed ahead of the probe's) and keeps `position_embeddings` for `qk`.

`qk` follows the modules' own code: Llama / Qwen2 (`q_proj`, `k_proj`, RoPE), OLMo 2 (q/k norm
over the full projection, then RoPE), Qwen3-style per-head q/k norm, and GPT-2 (`c_attn`, no
RoPE); RoPE is the model's own `apply_rotary_pos_emb`. The logits are `q.k / sqrt(head_dim)`,
the scaling these models use (not GPT-2's optional inverse-layer-index scaling).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_ROTARY: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def _positional(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if not args and "hidden_states" in kwargs:
        kwargs = dict(kwargs)
        args = (kwargs.pop("hidden_states"),)
    _ROTARY[module] = kwargs.get("position_embeddings")
    return args, kwargs


def trunk_of(blocks: str, attn: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor | None], Any]:
    """A trunk for the map with these paths: the model's forward on `input_ids` (causal, no
    document mask: HF models take none) in eval mode (no dropout: the probe measures the
    model, not a dropout draw), every attention input positional."""
    def trunk(model: nn.Module, input_ids: torch.Tensor, doc_ids: torch.Tensor | None) -> Any:
        handles = [block.get_submodule(attn).register_forward_pre_hook(
            _positional, prepend=True, with_kwargs=True) for block in model.get_submodule(blocks)]
        training = model.training
        model.eval()
        try:
            return model(input_ids=input_ids, use_cache=False)
        finally:
            model.train(training)
            for h in handles:
                h.remove()
    return trunk


def _per_head(norm: nn.Module | None, hd: int, width: int) -> bool | None:
    """Where a q/k norm applies: over the projection (False), per head (True), or none (None)."""
    weight = getattr(norm, "weight", None)
    if norm is None or weight is None:
        return None
    if weight.numel() == width:
        return False
    return True if weight.numel() == hd else None


def _project(proj: nn.Module, norm: nn.Module | None, x: torch.Tensor, hd: int) -> torch.Tensor:
    """[B, H, T, hd] of one projection with its norm where the model applies it."""
    b, t, _ = x.shape
    y = proj(x)
    where = _per_head(norm, hd, y.shape[-1])
    if where is False:
        y = norm(y)  # type: ignore[misc]
    y = y.view(b, t, -1, hd)
    if where is True:
        y = norm(y)  # type: ignore[misc]
    return y.transpose(1, 2)


def decoder_qk(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, T, H, hd], k [B, T, H_kv, hd] of a Llama-style attention module, after its q/k norm
    and RoPE."""
    hd = attn.head_dim
    q = _project(attn.q_proj, getattr(attn, "q_norm", None), x, hd)
    k = _project(attn.k_proj, getattr(attn, "k_norm", None), x, hd)
    rotary = _ROTARY.get(attn)
    if rotary is not None:
        cos, sin = rotary
        q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb(q, k, cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2)


def gpt2_qk(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, T, H, hd] of a GPT-2 attention module (fused `c_attn`, no RoPE)."""
    b, t, _ = x.shape
    q, k, _v = attn.c_attn(x).split(attn.split_size, dim=2)
    return q.view(b, t, attn.num_heads, -1), k.view(b, t, attn.num_heads, -1)
