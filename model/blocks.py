"""Transformer block with the four norm placements of the stability study.

    pre_norm:        h = x + Attn(N1(x));           out = h + MLP(N2(h))
    post_norm:       h = N1(x + Attn(x));           out = N2(h + MLP(h))
    reordered_norm:  h = x + N1(Attn(x));           out = h + N2(MLP(h))        (OLMo 2)
    peri_norm:       h = x + N1(Attn(N1in(x)));     out = h + N2(MLP(N2in(h)))

N1 = `attn_norm`, N2 = `mlp_norm`, N1in = `attn_in_norm`, N2in = `mlp_in_norm` (peri_norm only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import Attention
from model.config import ModelConfig
from model.mlp import SwiGLU
from model.norms import build_norm
from model.rope import RotaryEmbedding


class Block(nn.Module, ABC):
    """One decoder layer: attention, SwiGLU MLP and the norms of its placement (a subclass each,
    see the module docstring); `build_block` picks the class of `cfg.block`."""

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

    def forward(self, x: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.mix, x, doc_ids, use_reentrant=False)
        return self.mix(x, doc_ids)

    @abstractmethod
    def mix(self, x: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        """The residual stream after this layer: where the norms sit is the subclass's."""


class PreNormBlock(Block):
    def mix(self, x: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), doc_ids)
        return h + self.mlp(self.mlp_norm(h))


class PostNormBlock(Block):
    def mix(self, x: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        h = self.attn_norm(x + self.attn(x, doc_ids))
        return self.mlp_norm(h + self.mlp(h))


class ReorderedNormBlock(Block):
    """OLMo 2's placement: each sublayer's output is normed before it joins the residual stream."""

    def mix(self, x: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        h = x + self.attn_norm(self.attn(x, doc_ids))
        return h + self.mlp_norm(self.mlp(h))


class PeriNormBlock(Block):
    """Norms before and after each sublayer (OLMo-core's peri-LN block)."""

    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding | None = None) -> None:
        super().__init__(cfg, rope)
        self.attn_in_norm = build_norm(cfg.norm_type, cfg.d_model, cfg.norm_eps)
        self.mlp_in_norm = build_norm(cfg.norm_type, cfg.d_model, cfg.norm_eps)

    def mix(self, x: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        h = x + self.attn_norm(self.attn(self.attn_in_norm(x), doc_ids))
        return h + self.mlp_norm(self.mlp(self.mlp_in_norm(h)))


# `model.block` -> its class (the names are ModelConfig.CHOICES["block"]).
BLOCKS: dict[str, type[Block]] = {"pre_norm": PreNormBlock, "post_norm": PostNormBlock,
                                  "reordered_norm": ReorderedNormBlock, "peri_norm": PeriNormBlock}
assert tuple(BLOCKS) == ModelConfig.CHOICES["block"]


def build_block(cfg: ModelConfig, rope: RotaryEmbedding | None = None) -> Block:
    return BLOCKS[cfg.block](cfg, rope)
