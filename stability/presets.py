"""Named run presets: a model preset (`model.presets`) plus its recipe's training knobs and a budget.

`olmo2-<size>` is the final OLMo 2 recipe, `olmo0424-<size>` the "before" recipe (REFERENCE.md
section 1). The size sets the model shape and a sensible budget; the recipe sets the stability
knobs. Everything can be overridden with a TOML file or `--set`.
"""

from __future__ import annotations

from typing import Any

from model.config import ConfigError
from model.presets import MODEL_PRESETS, model_preset, recipe_of
from stability.config import RunConfig, apply_table

# Training-side knobs that differ between the two recipes (the model-side ones live in model/).
RECIPE_RUN_KNOBS: dict[str, dict[str, dict[str, Any]]] = {
    "olmo2": {
        "optim": {"eps": 1e-8, "embedding_weight_decay": False},
        "loss": {"z_loss": 1e-5},
        "data": {"ngram_filter": True},
    },
    "olmo0424": {
        "optim": {"eps": 1e-5, "embedding_weight_decay": True},
        "loss": {"z_loss": 0.0},
        "data": {"ngram_filter": False},
    },
}

# Budget and batch shape per size. tiny: tests; small: the CPU demo; the rest: GPU studies.
SIZE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "train": {"steps": 30, "batch_size": 8, "seq_len": 64, "log_every": 5, "eval_every": 0,
                  "eval_batches": 2},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 5},
        "data": {"max_bytes": 1_000_000},
    },
    "small": {
        "train": {"steps": 300, "batch_size": 8, "seq_len": 128, "log_every": 10,
                  "eval_every": 50, "eval_batches": 4},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 30},
        "data": {"max_bytes": 4_000_000},
    },
    "150m": {
        "train": {"steps": 2000, "batch_size": 32, "seq_len": 1024, "log_every": 10,
                  "eval_every": 200, "checkpoint_every": 500},
        "optim": {"lr": 6e-4},
        "schedule": {"warmup_steps": 200},
        "data": {"max_bytes": 64_000_000, "tokenizer_vocab": 32768},
    },
    "1b": {
        "train": {"steps": 5000, "batch_size": 16, "seq_len": 4096, "log_every": 10,
                  "eval_every": 500, "checkpoint_every": 500},
        "optim": {"lr": 4e-4},
        "schedule": {"warmup_steps": 500},
        "data": {"max_bytes": 256_000_000, "tokenizer_vocab": 32768},
    },
    "7b": {
        "train": {"steps": 10000, "batch_size": 16, "seq_len": 4096, "log_every": 10,
                  "eval_every": 1000, "checkpoint_every": 1000},
        "optim": {"lr": 3e-4},
        "schedule": {"warmup_steps": 2000},
        "data": {"max_bytes": 256_000_000, "tokenizer_vocab": 32768},
    },
}


def preset_names() -> list[str]:
    return sorted(MODEL_PRESETS)


def run_preset(name: str) -> RunConfig:
    """A fresh `RunConfig` for preset `name` (e.g. `olmo2-small`)."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r} (allowed: {', '.join(preset_names())})")
    recipe, _, size = name.partition("-")
    cfg = RunConfig(model=model_preset(name), preset=name)
    apply_table(cfg, RECIPE_RUN_KNOBS.get(recipe, {}))
    apply_table(cfg, SIZE_DEFAULTS.get(size, {}))
    return cfg


def run_recipe_of(cfg: RunConfig) -> str:
    """`olmo2`, `olmo0424` or `custom`: which recipe every model and training knob matches."""
    recipe = recipe_of(cfg.model)
    if recipe == "custom":
        return recipe
    for section, knobs in RECIPE_RUN_KNOBS[recipe].items():
        table = getattr(cfg, section)
        if any(getattr(table, k) != v for k, v in knobs.items()):
            return "custom"
    return recipe
