"""Data pipeline: corpus -> tokenizer -> packed sequences -> batches.

The corpus is text (stdlib, files, JSONL, Parquet) or tokens (.npy/.bin); the tokenizer is a
byte-level BPE trained locally (cached) or the user's own `tokenizer.json` (`data.tokenizer`).

`build_data(cfg, vocab_size=..., seq_len=..., seed=...)` returns a `PackedData` whose
`train_batch(step, batch_size)` is a pure function of (seed, step, batch_size), with optional
repeated-n-gram injection and the OLMo 2 repeated-n-gram loss mask.

Only the config is imported eagerly; the rest loads on first use (PEP 562), so that reading a
run config (`stability config`, `grid plan`) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import DataConfig

if TYPE_CHECKING:
    from .corpus import describe_default_corpus
    from .loader import IGNORE_INDEX, Batch, PackedData, build_data
    from .ngrams import inject_repeats, repeated_ngram_mask

_LAZY = {
    "describe_default_corpus": ".corpus",
    "IGNORE_INDEX": ".loader",
    "Batch": ".loader",
    "PackedData": ".loader",
    "build_data": ".loader",
    "inject_repeats": ".ngrams",
    "repeated_ngram_mask": ".ngrams",
}

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "DataConfig",
    "PackedData",
    "build_data",
    "describe_default_corpus",
    "inject_repeats",
    "repeated_ngram_mask",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stability.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
