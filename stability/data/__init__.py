"""Data pipeline: corpus -> tokenizer -> packed sequences -> batches.

The corpus is text (stdlib, files, JSONL, Parquet) or tokens (.npy/.bin); the tokenizer is a
byte-level BPE trained locally (cached) or the user's own `tokenizer.json` (`data.tokenizer`).

`build_data(cfg, vocab_size=..., seq_len=..., seed=...)` returns a `PackedData` whose
`train_batch(step, batch_size)` is a pure function of (seed, step, batch_size), with optional
repeated-n-gram injection and the OLMo 2 repeated-n-gram loss mask.
"""

from .config import DataConfig
from .corpus import describe_default_corpus
from .loader import IGNORE_INDEX, Batch, PackedData, build_data
from .ngrams import inject_repeats, repeated_ngram_mask

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
