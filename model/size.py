"""The model's size in closed form: parameters and training FLOPs per token, without building it.

The one place these numbers are computed: `Transformer.flops_per_token`, the grid plan, the
`stability presets` listing and MFU all read them here (torch-free, so commands that only plan
need no torch). `tests/model/test_model_size.py` checks `param_count` against the built model for
every norm type, placement, QK-norm, GQA and tying.
"""

from __future__ import annotations

from model.config import ModelConfig


def _norm(cfg: ModelConfig, dim: int) -> int:
    return 0 if cfg.norm_type == "layernorm_nonparam" else dim  # rms / layernorm: a scale, no bias


def param_count(cfg: ModelConfig, exclude_embeddings: bool = False) -> int:
    """Distinct parameters of `Transformer(cfg)` (a tied matrix counts once); optionally without
    the input embedding table (which, when tied, is also the head)."""
    d, hd, h, kv = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads
    attn = d * (h * hd + 2 * kv * hd) + h * hd * d  # fused qkv + o_proj, no biases
    if cfg.qk_norm == "full":
        attn += _norm(cfg, h * hd) + _norm(cfg, kv * hd)
    elif cfg.qk_norm == "per_head":
        attn += 2 * _norm(cfg, hd)
    mlp = 3 * d * cfg.hidden  # gate + up fused, down
    norms = (4 if cfg.block == "peri_norm" else 2) * _norm(cfg, d)
    embed = cfg.vocab_size * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    total = embed + cfg.n_layers * (attn + mlp + norms) + _norm(cfg, d) + head
    return total - embed if exclude_embeddings else total


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 6 n_layers d_model seq_len.

    N = non-embedding parameters including the LM-head matrix (counted even when tied); the
    second term is the attention-score and value matmuls, 12 L d T halved for causality.
    """
    n = param_count(cfg, exclude_embeddings=True)
    if cfg.tie_embeddings:
        n += cfg.vocab_size * cfg.d_model
    return 6.0 * n + 6.0 * cfg.n_layers * cfg.d_model * seq_len
