"""`ModelConfig`: every architecture toggle the stability study varies, and its validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

# Init schemes (drawn by model/init.py), and those that read `init_std` (the others ignore it).
INIT_SCHEMES = ("normal", "mitchell", "full_megatron", "llama", "llama_depth", "fan_in", "megatron",
                "megatron_depth")
USES_INIT_STD = ("normal", "full_megatron", "llama", "llama_depth", "megatron", "megatron_depth")


class ConfigError(ValueError):
    """A bad configuration value. The message is one line: `section.key: problem (allowed: ...)`."""


def suggest(name: str, options) -> str:
    """The end of an unknown-name message: "did you mean 'x'? allowed: a, b, ..."."""
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}allowed: {', '.join(options)}"


# Attention backends that run without CUDA (xformers needs it).
CPU_ATTENTION = ("auto", "sdpa", "eager")


def check_attention(name: str, device_type: str, section: str = "model") -> None:
    """Raise `ConfigError` if attention backend `name` cannot run on `device_type`."""
    allowed = ModelConfig.CHOICES["attention"]
    if name not in allowed:
        raise ConfigError(f"{section}.attention: {name!r} is not one of ({', '.join(allowed)})")
    if name == "xformers" and device_type != "cuda":
        raise ConfigError(f"{section}.attention: 'xformers' needs a CUDA device "
                          f"(allowed on {device_type}: {', '.join(CPU_ATTENTION)})")


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


@dataclass
class ModelConfig:
    """Shape and stability toggles of a decoder-only transformer (no biases, SwiGLU, RoPE)."""

    vocab_size: int = 50304
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: same as n_heads (multi-head attention)
    mlp_hidden: int | None = None  # None: int(8/3 * d_model) rounded up to a multiple of 256
    max_seq_len: int = 4096
    rope_theta: float = 500_000.0
    norm_type: str = "rms"
    norm_eps: float = 1e-6
    block: str = "reordered_norm"
    qk_norm: str = "full"
    clip_qkv: float | None = None
    init: str = "normal"
    init_std: float = 0.02
    init_cutoff: float = 3.0
    tie_embeddings: bool = False
    attention: str = "auto"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "norm_type": ("rms", "layernorm", "layernorm_nonparam"),
        "block": ("pre_norm", "post_norm", "reordered_norm", "peri_norm"),
        "qk_norm": ("none", "full", "per_head"),
        "init": INIT_SCHEMES,
        "attention": ("auto", "xformers", "sdpa", "eager"),
    }

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden(self) -> int:
        """The SwiGLU hidden width actually used; unset, OLMo-core's `llama_like` rounding
        (int(8 d / 3), then up to a multiple of 256)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 256 * math.ceil(int(8 * self.d_model / 3) / 256)

    def validate(self, section: str = "model") -> None:
        """Raise `ConfigError` naming the first bad key; checks value ranges and choices."""
        for key, allowed in self.CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"{section}.{key}: {value!r} is not one of ({_allowed(allowed)})")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{section}.{key}: must be a positive integer, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"{section}.n_heads: {self.n_heads} does not divide d_model={self.d_model}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"{section}.n_heads: head_dim {self.head_dim} must be even for RoPE")
        if self.n_kv_heads is not None and (
            self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads
        ):
            raise ConfigError(
                f"{section}.n_kv_heads: {self.n_kv_heads} must be a positive divisor of "
                f"n_heads={self.n_heads}"
            )
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ConfigError(f"{section}.mlp_hidden: must be positive or null, got {self.mlp_hidden}")
        for key in ("rope_theta", "norm_eps", "init_std", "init_cutoff"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{section}.{key}: must be > 0, got {getattr(self, key)}")
        if self.clip_qkv is not None and not self.clip_qkv > 0:
            raise ConfigError(f"{section}.clip_qkv: must be > 0 or null, got {self.clip_qkv}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
