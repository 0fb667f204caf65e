"""Inputs a user brings, made inside the tests: a Hugging Face tokenizer.json and Parquet shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from stability.data.corpus import stdlib_files


def write_tokenizer(path: Path, texts: list[str], vocab: int, specials: list[str]) -> Tokenizer:
    """Train a byte-level BPE on `texts` with `specials` first (ids 0, 1, ...) and save it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def write_parquet(path: Path, columns: dict[str, list], row_group_size: int = 4) -> None:
    """One Parquet shard with these columns, in row groups of `row_group_size` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def stdlib_texts(n_docs: int, max_chars: int = 3000) -> list[str]:
    """Real text: the first `n_docs` non-empty files of the default corpus, each cut short."""
    texts = []
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")[:max_chars]
        if text.strip():
            texts.append(text)
        if len(texts) == n_docs:
            break
    return texts


def encoded(tok: Tokenizer, texts: list[str], eos_id: int) -> np.ndarray:
    """The stream the pipeline must produce: each text's ids (no added specials), then EOS."""
    ids: list[int] = []
    for text in texts:
        ids += tok.encode(text, add_special_tokens=False).ids + [eos_id]
    return np.array(ids, dtype=np.int64)
