"""Transformer block with the four norm placements of the stability study.

    pre_norm:        h = x + Attn(N1(x));           out = h + MLP(N2(h))
    post_norm:       h = N1(x + Attn(x));           out = N2(h + MLP(h))
    reordered_norm:  h = x + N1(Attn(x));           out = h + N2(MLP(h))        (OLMo 2)
    peri_norm:       h = x + N1(Attn(N1in(x)));     out = h + N2(MLP(N2in(h)))

N1 = `attn_norm`, N2 = `mlp_norm`, N1in = `attn_in_norm`, N2in = `mlp_in_norm` (peri_norm only).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import Attention
from model.config import ModelConfig
from model.mlp import SwiGLU
from model.norms import build_norm
from model.rope import RotaryEmbedding


class Block(nn.Module):
    """One decoder layer; `cfg.block` picks the norm placement (see module docstring)."""

    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.placement = cfg.block
        # Recompute this block in backward instead of keeping its activations (train.activation_
        # checkpointing); only while training with grad enabled. Inside forward, so FSDP's hooks
        # on the block stay outside the checkpointed region.
        self.checkpointing = False
        self.attn = Attention(cfg, rope)
        self.mlp = SwiGLU(cfg)
        self.attn_norm = build_norm(cfg.norm_type, cfg.d_model, cfg.norm_eps)
        self.mlp_norm = build_norm(cfg.norm_type, cfg.d_model, cfg.norm_eps)
        if cfg.block == "peri_norm":
            self.attn_in_norm = build_norm(cfg.norm_type, cfg.d_model, cfg.norm_eps)
            self.mlp_in_norm = build_norm(cfg.norm_type, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, doc_ids, use_reentrant=False)
        return self._forward(x, doc_ids)

    def _forward(self, x: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        attn = lambda y: self.attn(y, doc_ids)  # noqa: E731
        if self.placement == "pre_norm":
            h = x + attn(self.attn_norm(x))
            return h + self.mlp(self.mlp_norm(h))
        if self.placement == "post_norm":
            h = self.attn_norm(x + attn(x))
            return self.mlp_norm(h + self.mlp(h))
        if self.placement == "reordered_norm":
            h = x + self.attn_norm(attn(x))
            return h + self.mlp_norm(self.mlp(h))
        if self.placement == "peri_norm":
            h = x + self.attn_norm(attn(self.attn_in_norm(x)))
            return h + self.mlp_norm(self.mlp(self.mlp_in_norm(h)))
        raise ValueError(f"unknown block placement {self.placement!r}")
