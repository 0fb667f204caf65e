"""Decoder-only language model: embed -> blocks -> final_norm -> lm_head."""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import build_block
from model.config import ModelConfig
from model.norms import build_norm
from model.rope import RotaryEmbedding
from model.size import flops_per_token


class Transformer(nn.Module):
    """The model of `cfg` (weights left at torch defaults: use `model.build` or `init_weights`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)  # shared
        self.blocks = nn.ModuleList(build_block(cfg, self.rope) for _ in range(cfg.n_layers))
        self.final_norm = build_norm(cfg.norm_type, cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def features(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The LM head's input: the final-normed residual stream [B, T, d].

        The trainer feeds it to a fused head + loss so the [B, T, V] logits never exist. With
        `return_hidden`, also the residual stream after each block (n_layers tensors [B, T, d]).
        """
        if input_ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} > {self.cfg.max_seq_len}")
        x = self.embed(input_ids)
        hidden = []
        for block in self.blocks:
            x = block(x, doc_ids)
            if return_hidden:
                hidden.append(x)
        out = self.final_norm(x)
        return (out, hidden) if return_hidden else out

    def forward(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids [B, T] -> logits [B, T, V] (in the compute dtype; cast for the loss).

        `doc_ids` [B, T] restricts attention to the same document (positions stay 0..T-1:
        RoPE is relative). With `return_hidden`, also returns the residual stream after each
        block (a list of n_layers tensors [B, T, d]).
        """
        if return_hidden:
            out, hidden = self.features(input_ids, doc_ids, return_hidden=True)
            return self.lm_head(out), hidden
        return self.lm_head(self.features(input_ids, doc_ids))

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied matrix counts once); optionally without the input
        embedding table (which, when tied, is also the head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (`model.size.flops_per_token`: 6 N + 6 L d T)."""
        return flops_per_token(self.cfg, seq_len)
