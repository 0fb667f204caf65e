"""Rotary position embedding, "rotate_half" (non-interleaved) convention as in HF / OLMo-core."""

from __future__ import annotations

import torch
from torch import nn

from model.fused import rotary


class RotaryEmbedding(nn.Module):
    """Caches cos/sin (fp32, non-persistent buffers) for positions 0..max_seq_len-1.

    One instance may be shared by every attention layer of a model.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        self.theta = theta
        cos, sin = self._tables(None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def reset_tables(self) -> None:
        """Recompute cos/sin in fp32 on the buffers' device (after `to_empty` or a dtype cast)."""
        self.cos, self.sin = self._tables(self.cos.device)

    def _tables(self, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.head_dim
        inv_freq = 1.0 / (
            self.theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd)
        )
        t = torch.arange(self.max_seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_seq_len, head_dim]
        return emb.cos(), emb.sin()

    def tables(self, positions: torch.Tensor | None, seq_len: int) -> tuple[torch.Tensor, ...]:
        """cos, sin for `positions` ([T] or [B, T]; None = 0..seq_len-1), fp32, [..., T, hd]."""
        if self.cos.dtype != torch.float32:  # e.g. after model.to(torch.bfloat16)
            self.reset_tables()
        if positions is None:
            if seq_len > self.max_seq_len:
                raise ValueError(f"sequence length {seq_len} > max_seq_len {self.max_seq_len}")
            return self.cos[:seq_len], self.sin[:seq_len]
        return self.cos[positions], self.sin[positions]

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate `x` of shape [B, T, H, hd]; the maths is done in fp32, result in x's dtype."""
        cos, sin = self.tables(positions, x.shape[1])
        half = self.head_dim // 2  # the tables repeat over the two halves
        return rotary(x, cos[..., None, :half], sin[..., None, :half])  # broadcast over heads

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, theta={self.theta}"

