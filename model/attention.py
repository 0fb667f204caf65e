"""Multi-head / grouped-query self-attention with OLMo's clip_qkv and QK-norm options."""

from __future__ import annotations

import torch
from torch import nn

from model.attention_backends import attend, attention_logits
from model.config import ModelConfig
from model.norms import build_norm
from model.rope import RotaryEmbedding


class Attention(nn.Module):
    """project -> clamp q,k,v (clip_qkv) -> QK-norm (full | per_head) -> RoPE -> attend -> o_proj.

    q, k and v come from one fused `qkv_proj` (rows: q, then k, then v); `q_weight`, `k_weight`
    and `v_weight` are views of its parts.

    `full` QK-norm normalises q over n_heads*hd and k over kv_heads*hd before the head split;
    `per_head` applies one hd-wide norm (shared by all heads) after it.
    """

    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.qk_norm = cfg.qk_norm
        self.clip_qkv = cfg.clip_qkv
        self.backend = cfg.attention
        d, hd = cfg.d_model, cfg.head_dim
        # q, k and v projections as one matrix (one matmul): rows [q | k | v].
        self.qkv_split = (self.n_heads * hd, self.kv_heads * hd, self.kv_heads * hd)
        self.qkv_proj = nn.Linear(d, sum(self.qkv_split), bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)
        if cfg.qk_norm == "full":
            self.q_norm = build_norm(cfg.norm_type, self.n_heads * hd, cfg.norm_eps)
            self.k_norm = build_norm(cfg.norm_type, self.kv_heads * hd, cfg.norm_eps)
        elif cfg.qk_norm == "per_head":
            self.q_norm = build_norm(cfg.norm_type, hd, cfg.norm_eps)
            self.k_norm = build_norm(cfg.norm_type, hd, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        if rope is None:
            rope = RotaryEmbedding(hd, cfg.max_seq_len, cfg.rope_theta)
        self.rope = rope

    @property
    def q_weight(self) -> torch.Tensor:
        return self.qkv_proj.weight.split(self.qkv_split)[0]

    @property
    def k_weight(self) -> torch.Tensor:
        return self.qkv_proj.weight.split(self.qkv_split)[1]

    @property
    def v_weight(self) -> torch.Tensor:
        return self.qkv_proj.weight.split(self.qkv_split)[2]

    def project_qkv(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, T, H, hd], k and v [B, T, Hkv, hd], exactly as attention sees them.

        q and k are post-clip, post-norm and post-RoPE; `positions` defaults to 0..T-1.
        """
        b, t, _ = x.shape
        qkv = self.qkv_proj(x)
        if self.clip_qkv is not None:
            qkv = qkv.clamp(-self.clip_qkv, self.clip_qkv)
        q, k, v = qkv.split(self.qkv_split, dim=-1)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.kv_heads, self.head_dim)
        v = v.view(b, t, self.kv_heads, self.head_dim)
        if self.qk_norm == "per_head":
            q, k = self.q_norm(q), self.k_norm(k)
        return self.rope(q, positions), self.rope(k, positions), v

    def project_qk(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The q and k of `project_qkv` (for probes)."""
        q, k, _ = self.project_qkv(x, positions)
        return q, k

    def logits(
        self,
        x: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention logits q.k/sqrt(hd) in fp32, [B, H, T, T], masked entries -inf (for probes)."""
        q, k = self.project_qk(x, positions)
        return attention_logits(q, k, doc_ids)

    def forward(
        self,
        x: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, T, d] -> [B, T, d]; causal, and within documents when `doc_ids` [B, T] is given."""
        q, k, v = self.project_qkv(x, positions)
        out = attend(self.backend, q, k, v, doc_ids)
        return self.o_proj(out.reshape(x.shape[0], x.shape[1], -1))
