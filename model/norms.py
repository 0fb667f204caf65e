"""Normalisation layers: RMSNorm, scale-only LayerNorm, non-parametric LayerNorm.

All compute in fp32 and cast the result back to the input dtype (as HF `Olmo2RMSNorm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ConfigError, ModelConfig
from model.fused import rms_norm


class RMSNorm(nn.Module):
    """`weight * x * rsqrt(mean(x^2) + eps)` over the last dim; scale, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.Module):
    """`(x - mean) / sqrt(var + eps)` over the last dim, times a scale if `scale`; no bias."""

    def __init__(self, dim: int, eps: float = 1e-5, scale: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        weight = None if self.weight is None else self.weight.float()
        return F.layer_norm(x.float(), (self.dim,), weight, None, self.eps).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, scale={self.weight is not None}"


def build_norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    """The norm named by `ModelConfig.norm_type`: rms | layernorm | layernorm_nonparam."""
    if norm_type == "rms":
        return RMSNorm(dim, eps)
    if norm_type == "layernorm":
        return LayerNorm(dim, eps, scale=True)
    if norm_type == "layernorm_nonparam":
        return LayerNorm(dim, eps, scale=False)
    allowed = ", ".join(ModelConfig.CHOICES["norm_type"])
    raise ConfigError(f"model.norm_type: {norm_type!r} is not one of ({allowed})")
