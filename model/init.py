"""Weight initialisation schemes; `expected_std` is the one source of truth for each std.

Every weight matrix is drawn from a normal truncated at +-cfg.init_cutoff standard deviations;
norm weights are set to 1. Per scheme (layer = 0-based block index, d = d_model, L = n_layers):

    normal       every matrix (embeddings, lm_head too)     init_std
    mitchell     embed, qkv, gate_up, lm_head                1/sqrt(d)
                 o_proj                                      1/sqrt(2 d (layer+1))
                 down_proj                                   1/sqrt(2 hidden (layer+1))
    megatron     all init_std; o_proj, down_proj             init_std/sqrt(2 L)
    llama_depth  all init_std; o_proj, down_proj             init_std/sqrt(2 (layer+1))
    fan_in       each Linear 1/sqrt(in_features); embed      1/sqrt(d)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import ConfigError, ModelConfig
from model.rope import RotaryEmbedding

# q/k/v and gate/up are fused matrices; every scheme gives their parts the same std.
BLOCK_MATRICES = ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
_OUTPUT_PROJ = ("attn.o_proj", "mlp.down_proj")


def _fan_in(cfg: ModelConfig, name: str) -> int:
    if name == "attn.o_proj":
        return cfg.n_heads * cfg.head_dim
    return cfg.hidden if name == "mlp.down_proj" else cfg.d_model


def _layer_std(cfg: ModelConfig, name: str, layer: int) -> float:
    """std of weight `name` (e.g. "attn.o_proj") of block `layer`."""
    d, depth = cfg.d_model, layer + 1
    scheme = cfg.init
    if scheme == "normal":
        return cfg.init_std
    if scheme == "fan_in":
        return 1.0 / math.sqrt(_fan_in(cfg, name))
    if scheme == "mitchell":
        if name == "attn.o_proj":
            return 1.0 / math.sqrt(2 * d * depth)
        if name == "mlp.down_proj":
            return 1.0 / math.sqrt(2 * cfg.hidden * depth)
        return 1.0 / math.sqrt(d)
    if scheme in ("megatron", "llama_depth"):
        if name not in _OUTPUT_PROJ:
            return cfg.init_std
        n = cfg.n_layers if scheme == "megatron" else depth
        return cfg.init_std / math.sqrt(2 * n)
    allowed = ", ".join(ModelConfig.CHOICES["init"])
    raise ConfigError(f"model.init: {scheme!r} is not one of ({allowed})")


def expected_std(cfg: ModelConfig) -> dict[str, float]:
    """The init std of every weight matrix of `Transformer(cfg)`, by parameter name.

    Norm weights are absent (they are set to 1); `lm_head.weight` is absent when tied.
    """
    d_std = cfg.init_std if cfg.init in ("normal", "megatron", "llama_depth") else cfg.d_model**-0.5
    stds = {"embed.weight": d_std}
    for i in range(cfg.n_layers):
        for name in BLOCK_MATRICES:
            stds[f"blocks.{i}.{name}.weight"] = _layer_std(cfg, name, i)
    if not cfg.tie_embeddings:
        stds["lm_head.weight"] = d_std
    return stds


@torch.no_grad()
def init_weights(
    model: nn.Module, cfg: ModelConfig, generator: torch.Generator | None = None
) -> None:
    """Initialise `model` (a `Transformer`) in place per `cfg.init` (see module docstring).

    Parameters are drawn in `named_parameters()` order, so a generator seeded alike gives the
    same weights. A CPU generator with a model elsewhere draws on CPU and copies (device-agnostic).
    """
    stds = expected_std(cfg)
    for name, p in model.named_parameters():
        if name in stds:
            std, c = stds[name], cfg.init_cutoff
            target = p
            if generator is not None and generator.device.type != p.device.type:
                target = torch.empty(p.shape, dtype=p.dtype, device=generator.device)
            nn.init.trunc_normal_(target, 0.0, std, -c * std, c * std, generator=generator)
            if target is not p:
                p.copy_(target)
        elif p.ndim == 1:
            nn.init.ones_(p)  # norm scales
        else:
            raise ValueError(f"init_weights: no init rule for parameter {name!r}")
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_tables()
