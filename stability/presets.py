"""Named run presets, as data: a model preset (`model.presets`) plus its recipe's training knobs
and its size's budget (`stability.config.run_preset` builds the `RunConfig`).

`olmo2-<size>` is the final OLMo 2 recipe, `olmo0424-<size>` the "before" recipe
(docs/reference.md section 1). The size sets the model shape and a sensible budget; the recipe
sets the stability knobs. Everything can be overridden with a TOML file or `--set`.
"""

from __future__ import annotations

from typing import Any

from model.presets import MODEL_PRESETS

# Training-side knobs that differ between the two recipes (the model-side ones live in model/).
# Sources: docs/reference.md section 1 (the released configs OLMo2-7B-stage1.yaml and
# OLMo-7B-0424.yaml: decay_norm_and_bias true in both, decay_embeddings false / true).
RECIPE_RUN_KNOBS: dict[str, dict[str, dict[str, Any]]] = {
    "olmo2": {
        "optim": {"eps": 1e-8, "embedding_weight_decay": False, "norm_weight_decay": True},
        "loss": {"z_loss": 1e-5},
        "data": {"ngram_filter": True},
    },
    "olmo0424": {
        "optim": {"eps": 1e-5, "embedding_weight_decay": True, "norm_weight_decay": True},
        "loss": {"z_loss": 0.0},
        "data": {"ngram_filter": False},
    },
}


def _gpu_budget(steps: int, batch: int, seq: int, lr: float, warmup: int, max_mb: int) -> dict:
    every = max(steps // 10, 100)
    return {
        "train": {"steps": steps, "batch_size": batch, "seq_len": seq, "log_every": 10,
                  "eval_every": every, "checkpoint_every": min(every * 2, 1000)},
        "optim": {"lr": lr},
        "schedule": {"warmup_steps": warmup},
        "data": {"max_bytes": max_mb * 1_000_000, "tokenizer_vocab": 32768},
    }


_SMALL_GPU = _gpu_budget(2000, 32, 1024, 6e-4, 200, 64)
_MID_GPU = _gpu_budget(5000, 16, 4096, 4e-4, 500, 256)  # 4e-4: OLMo2-1B-stage1.yaml's peak LR
_LARGE_GPU = _gpu_budget(10000, 16, 4096, 3e-4, 2000, 256)  # 3e-4: OLMo2-7B/13B-stage1.yaml

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
    **{size: _SMALL_GPU for size in ("14M", "30M", "60M", "100M", "190M", "370M")},
    **{size: _MID_GPU for size in ("600M", "760M", "1B", "1B_v2", "3B")},
    **{size: _LARGE_GPU for size in ("7B", "13B", "32B")},
}


def preset_names() -> list[str]:
    return list(MODEL_PRESETS)
