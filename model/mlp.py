"""SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases; gate and up are one matmul."""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.fused import swiglu


class SwiGLU(nn.Module):
    """`down_proj(silu(gate(x)) * up(x))`, hidden width `cfg.hidden`; `gate_up_proj` holds the
    gate rows then the up rows (`gate_weight`, `up_weight` are views)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden = cfg.hidden
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * cfg.hidden, bias=False)
        self.down_proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    @property
    def gate_weight(self) -> torch.Tensor:
        return self.gate_up_proj.weight[: self.hidden]

    @property
    def up_weight(self) -> torch.Tensor:
        return self.gate_up_proj.weight[self.hidden :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x)))
