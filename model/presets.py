"""Named model configurations: two recipes (OLMo 2 final, OLMo-0424 before) x the sizes.

The sizes named after OLMo-core's `TransformerConfig.olmo2_*` builders (`190M`, `1B_v2`, `7B`,
...) have exactly those shapes (d_model, layers, heads, kv heads, SwiGLU hidden width), with
OLMo 2's padded 100,352-token vocabulary and sequence length 4096; tests/reference/ builds each
with OLMo-core and compares. `tiny` and `small` are ours: CPU shapes for tests and the demo.
"""

from __future__ import annotations

import dataclasses
import difflib

from model.config import USES_INIT_STD, ConfigError, ModelConfig

# Model-level knobs of each recipe (docs/reference.md section 1).
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

OLMO2_VOCAB = 100352  # OLMo 2's dolma2 tokenizer (100,278 entries) padded to a multiple of 128


def _olmo_core(d_model: int, n_layers: int, n_heads: int, hidden: int,
               n_kv_heads: int | None = None) -> dict:
    return dict(vocab_size=OLMO2_VOCAB, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=n_kv_heads, mlp_hidden=hidden, max_seq_len=4096)


# Shapes; every size is untied and uses the default attention backend ("auto").
SIZES: dict[str, dict] = {
    "tiny": dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, mlp_hidden=384,
                 max_seq_len=256),
    # small: the CPU demo, ~13 train steps/s at batch 8 x seq 128, fp32, 2 threads (measured)
    "small": dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, mlp_hidden=384,
                  max_seq_len=512),
    # OLMo-core's olmo2_<size> builders (olmo_core.nn.transformer.TransformerConfig).
    "14M": _olmo_core(128, 4, 8, 512),
    "30M": _olmo_core(256, 4, 8, 768),
    "60M": _olmo_core(384, 8, 8, 1536),
    "100M": _olmo_core(512, 12, 8, 2048),
    "190M": _olmo_core(768, 12, 12, 3072),
    "370M": _olmo_core(1024, 16, 16, 4096),
    "600M": _olmo_core(1344, 16, 16, 5376),
    "760M": _olmo_core(1536, 16, 16, 6144),
    "1B": _olmo_core(2048, 18, 16, 8192),
    "1B_v2": _olmo_core(2048, 16, 16, 8192),  # the released OLMo-2-0425-1B shape
    "3B": _olmo_core(3328, 16, 16, 13312),
    "7B": _olmo_core(4096, 32, 32, 11008),
    "13B": _olmo_core(5120, 40, 40, 13824),
    "32B": _olmo_core(5120, 64, 40, 27648, n_kv_heads=8),
}

MODEL_PRESETS: dict[str, ModelConfig] = {
    f"{recipe}-{size}": ModelConfig(**shape, **knobs, init_cutoff=3.0, tie_embeddings=False)
    for recipe, knobs in RECIPE_KNOBS.items()
    for size, shape in SIZES.items()
}

# Earlier names of the OLMo-core sizes, for a helpful message.
RENAMED = {"150m": "190M", "1b": "1B_v2", "7b": "7B"}


def unknown_preset(name: str, key: str = "model.preset") -> ConfigError:
    """The one-line error for an unknown preset name: a rename, a close match, the list."""
    recipe, _, size = name.partition("-")
    renamed = f"{recipe}-{RENAMED.get(size)}"
    if renamed in MODEL_PRESETS:
        return ConfigError(f"{key}: {name!r} is now {renamed!r} (OLMo-core's name for this shape)")
    lowered = {p.lower(): p for p in MODEL_PRESETS}
    close = [lowered[name.lower()]] if name.lower() in lowered else difflib.get_close_matches(
        name, list(MODEL_PRESETS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"{key}: unknown {name!r} ({hint}allowed: {', '.join(MODEL_PRESETS)})")


def model_preset(name: str) -> ModelConfig:
    """A fresh copy of preset `name` (e.g. "olmo2-tiny")."""
    if name not in MODEL_PRESETS:
        raise unknown_preset(name)
    return dataclasses.replace(MODEL_PRESETS[name])


def recipe_of(cfg: ModelConfig) -> str:
    """"olmo2" or "olmo0424" when every recipe knob of `cfg` matches, else "custom".

    init_std is compared only for inits that use it.
    """
    for recipe, knobs in RECIPE_KNOBS.items():
        if all(
            getattr(cfg, key) == value
            for key, value in knobs.items()
            if key != "init_std" or cfg.init in USES_INIT_STD
        ):
            return recipe
    return "custom"
