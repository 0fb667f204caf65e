"""Named model configurations: two recipes (OLMo 2 final, OLMo-0424 before) x five sizes."""

from __future__ import annotations

import dataclasses

from model.config import ConfigError, ModelConfig

# Model-level knobs of each recipe (REFERENCE.md section 1).
RECIPE_KNOBS: dict[str, dict] = {
    "olmo2": {
        "norm_type": "rms",
        "norm_eps": 1e-6,
        "block": "reordered_norm",
        "qk_norm": "full",
        "clip_qkv": None,
        "init": "normal",
        "init_std": 0.02,
        "rope_theta": 500_000.0,
    },
    "olmo0424": {
        "norm_type": "layernorm_nonparam",
        "norm_eps": 1e-5,
        "block": "pre_norm",
        "qk_norm": "none",
        "clip_qkv": 8.0,
        "init": "mitchell",
        "init_std": 0.02,  # unused by mitchell
        "rope_theta": 10_000.0,
    },
}

# Shapes; every size is untied and uses the default attention backend ("auto").
SIZES: dict[str, dict] = {
    "tiny": dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, mlp_hidden=384,
                 max_seq_len=256),
    # small: the CPU demo, ~13 train steps/s at batch 8 x seq 128, fp32, 2 threads (measured)
    "small": dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, mlp_hidden=384,
                  max_seq_len=512),
    "150m": dict(vocab_size=100352, d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072,
                 max_seq_len=4096),
    "1b": dict(vocab_size=100352, d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192,
               max_seq_len=4096),
    "7b": dict(vocab_size=100352, d_model=4096, n_layers=32, n_heads=32, mlp_hidden=11008,
               max_seq_len=4096),
}  # fmt: skip

MODEL_PRESETS: dict[str, ModelConfig] = {
    f"{recipe}-{size}": ModelConfig(**shape, **knobs, init_cutoff=3.0, tie_embeddings=False)
    for recipe, knobs in RECIPE_KNOBS.items()
    for size, shape in SIZES.items()
}


def model_preset(name: str) -> ModelConfig:
    """A fresh copy of preset `name` (e.g. "olmo2-tiny")."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"model.preset: unknown {name!r} (allowed: {', '.join(MODEL_PRESETS)})")
    return dataclasses.replace(MODEL_PRESETS[name])


def recipe_of(cfg: ModelConfig) -> str:
    """"olmo2" or "olmo0424" when every recipe knob of `cfg` matches, else "custom".

    init_std is compared only for inits that use it (normal, megatron, llama_depth).
    """
    for recipe, knobs in RECIPE_KNOBS.items():
        if all(
            getattr(cfg, key) == value
            for key, value in knobs.items()
            if key != "init_std" or cfg.init in ("normal", "megatron", "llama_depth")
        ):
            return recipe
    return "custom"
