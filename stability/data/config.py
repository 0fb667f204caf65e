"""`DataConfig`: where the text comes from, how it is tokenized, packed and filtered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from model.config import ConfigError

TOKEN_SUFFIXES = (".npy", ".bin")  # pre-tokenized corpora


@dataclass
class DataConfig:
    """The `[data]` table of a run config."""

    # "stdlib" (the default corpus: this Python's standard library sources, see corpus.py),
    # or a path: a text file, a folder of .txt/.md/.py/.rst files, a .jsonl file with a text
    # field, a .parquet file or a folder of .parquet shards with a text column, or a
    # pre-tokenized .npy / .bin token file (uint16 or uint32, documents separated by eos_id,
    # as OLMo's data).
    corpus: str = "stdlib"
    text_field: str = "text"  # JSONL field / Parquet column holding the document text
    # "": train a byte-level BPE on the corpus (cached); a path: an existing Hugging Face
    # tokenizer.json (or a folder holding one), e.g. OLMo 2's dolma2 tokenizer
    tokenizer: str = ""
    eos_token: str = ""  # with `tokenizer`: the token joining documents ("": a known EOS name)
    token_dtype: str = "auto"  # for .bin token files: uint16 | uint32 (auto: from the .npy header)
    eos_id: int = -1  # for token files: the document separator (-1: no document boundaries)
    max_bytes: int = 8_000_000  # cap on the text read from the corpus (a fixed prefix)
    tokenizer_vocab: int = 0  # trained-BPE vocabulary size; 0: model.vocab_size (unused with
    # `tokenizer`: a tokenizer file brings its own vocabulary, checked against model.vocab_size)
    val_fraction: float = 0.02  # share of packed sequences held out for eval/loss
    doc_mask: bool = False  # block-diagonal (intra-document) attention masking for packed sequences
    ngram_filter: bool = False  # mask spans of >= ngram_min_repeats n-gram repeats out of the loss
    ngram_max_n: int = 13  # n-grams of n = 1..ngram_max_n tokens
    ngram_min_repeats: int = 32  # consecutive repeats that make a span "repeated"
    inject_repeats: float = 0.0  # share of training sequences given an inserted repeated span
    inject_repeat_count: int = 32  # repeats in an injected span (>= ngram_min_repeats is caught)
    inject_span_share: float = 0.5  # the most of a row an injected span covers (n-grams that fit)
    # batch indices whose tokens are replaced by uniform random ones, a corrupted shard: a loss
    # spike that data causes, for comparing spike responses (skip-step, rewind-and-skip)
    bad_batches: list[int] = field(default_factory=list)
    cache_dir: str = ""  # tokenizer/token cache; "": $STABILITY_CACHE or ~/.cache/olmo-stability

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "token_dtype": ("auto", "uint16", "uint32"),
    }

    def validate(self, section: str = "data") -> None:
        """Raise `ConfigError` naming the first bad key (existence of paths is checked at load)."""
        if self.token_dtype not in self.CHOICES["token_dtype"]:
            raise ConfigError(
                f"{section}.token_dtype: {self.token_dtype!r} is not one of (auto, uint16, uint32)"
            )
        if not self.corpus:
            raise ConfigError(f"{section}.corpus: empty (allowed: 'stdlib' or a path)")
        self._validate_tokenizer(section)
        if self.max_bytes < 1:
            raise ConfigError(f"{section}.max_bytes: must be positive, got {self.max_bytes}")
        if self.tokenizer_vocab < 0 or 0 < self.tokenizer_vocab < 259:
            raise ConfigError(
                f"{section}.tokenizer_vocab: must be 0 or >= 259 (256 bytes + specials), "
                f"got {self.tokenizer_vocab}"
            )
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(
                f"{section}.val_fraction: must be in (0, 0.5), got {self.val_fraction}"
            )
        if not 1 <= self.ngram_max_n <= 64:
            raise ConfigError(f"{section}.ngram_max_n: must be in [1, 64], got {self.ngram_max_n}")
        if self.ngram_min_repeats < 2:
            raise ConfigError(
                f"{section}.ngram_min_repeats: must be >= 2, got {self.ngram_min_repeats}"
            )
        if not 0.0 <= self.inject_repeats <= 1.0:
            raise ConfigError(
                f"{section}.inject_repeats: must be in [0, 1], got {self.inject_repeats}"
            )
        if any(not isinstance(i, int) or i < 0 for i in self.bad_batches):
            raise ConfigError(f"{section}.bad_batches: need batch indices >= 0, got {self.bad_batches}")
        if not 0.0 < self.inject_span_share <= 1.0:
            raise ConfigError(
                f"{section}.inject_span_share: must be in (0, 1], got {self.inject_span_share}"
            )
        if self.inject_repeat_count < 2:
            raise ConfigError(
                f"{section}.inject_repeat_count: must be >= 2, got {self.inject_repeat_count}"
            )

    def _validate_tokenizer(self, section: str) -> None:
        """`tokenizer` and `eos_token` only mean something for text corpora read as text."""
        if self.eos_token and not self.tokenizer:
            raise ConfigError(
                f"{section}.eos_token: {self.eos_token!r} needs {section}.tokenizer (allowed: '' "
                "with the trained BPE, whose EOS is <|endoftext|>)"
            )
        if self.tokenizer and self.corpus.endswith(TOKEN_SUFFIXES):
            raise ConfigError(
                f"{section}.tokenizer: corpus '{self.corpus}' is already tokenized (allowed: '' "
                f"with .npy/.bin corpora; set {section}.eos_id for document boundaries)"
            )
