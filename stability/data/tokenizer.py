"""Byte-level BPE trained locally with `tokenizers`, and the disk cache for it and its tokens.

Cache files live in `cache_dir(cfg)`. The trained BPE and its tokens are keyed by the corpus
fingerprint and the vocabulary size (tokens also by the tokenizer's content); tokens of a user's
tokenizer file (`hf_tokenizer`) by the corpus fingerprint, the file's SHA-256 and the EOS id.
Each file is written to a temporary file in the same folder and moved into place with
`os.replace`, so parallel processes never read half a file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import ConfigError, DataConfig
from .hf_tokenizer import UserTokenizer, id_count

EOS_TOKEN = "<|endoftext|>"
_KEY_VERSION = "bpe-v1"
_FILE_KEY_VERSION = "file-v1"
_ENCODE_CHUNK = 256  # documents per encode_batch call (progress granularity)


def cache_dir(cfg: DataConfig) -> Path:
    """`cfg.cache_dir`, else `$STABILITY_CACHE`, else `~/.cache/olmo-stability`."""
    raw = cfg.cache_dir or os.environ.get("STABILITY_CACHE") or "~/.cache/olmo-stability"
    return Path(raw).expanduser()


@dataclass
class Tokenized:
    """A corpus as one EOS-separated token stream, with the tokenizer that made it."""

    tokenizer: Tokenizer
    tokens: np.ndarray
    eos_id: int
    cache_hit: bool  # tokenizer and tokens both came from the cache


def cache_key(fingerprint: str, vocab: int) -> str:
    """File-name key for a (corpus, vocabulary size) pair."""
    text = f"{_KEY_VERSION}:{fingerprint}:{vocab}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _atomic_write(path: Path, write: Callable[[object], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write the tokenizer JSON atomically."""
    text = tok.to_str().encode("utf-8")
    _atomic_write(path, lambda fh: fh.write(text))


def save_tokens(tokens: np.ndarray, path: Path) -> None:
    """Write a token array as .npy atomically."""
    _atomic_write(path, lambda fh: np.save(fh, tokens, allow_pickle=False))


def train_bpe(documents: list[str], vocab: int) -> Tokenizer:
    """Train a byte-level BPE with `<|endoftext|>` as its only special token (id 0).

    (The trainer's own progress bar is off: it writes blank lines to stdout when not on a tty.)
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer, length=len(documents))
    return tok


def encode_documents(
    tok: Tokenizer, documents: list[str], eos_id: int, progress: bool = False
) -> np.ndarray:
    """Encode all documents (batched, parallel) into one stream, each followed by `eos_id`."""
    dtype = np.uint16 if id_count(tok) <= 1 << 16 else np.uint32
    eos = np.array([eos_id], dtype=dtype)
    parts: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(documents), desc="tokenizing", unit="doc", file=sys.stderr)
    for start in range(0, len(documents), _ENCODE_CHUNK):
        chunk = documents[start : start + _ENCODE_CHUNK]
        for enc in tok.encode_batch_fast(chunk, add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            parts.append(eos)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _cached_tokens(
    path: Path, tok: Tokenizer, documents: list[str], eos_id: int, progress: bool
) -> tuple[np.ndarray, bool]:
    """The token stream stored at `path`, else encoded now and stored; and whether it was a hit."""
    if path.exists():
        return np.load(path, allow_pickle=False), True
    tokens = encode_documents(tok, documents, eos_id, progress=progress)
    save_tokens(tokens, path)
    return tokens, False


def tokenizer_and_tokens(
    documents: list[str],
    fingerprint: str,
    cfg: DataConfig,
    vocab_size: int,
    progress: bool = False,
) -> Tokenized:
    """The (cached) trained BPE and its (cached) EOS-separated token stream."""
    vocab = cfg.tokenizer_vocab or vocab_size
    if vocab > vocab_size:
        raise ConfigError(f"data.tokenizer_vocab: {vocab} > model.vocab_size {vocab_size}")
    if vocab < 259:
        raise ConfigError(
            f"data.tokenizer_vocab: {vocab} is too small (allowed: >= 259, or 0 with "
            "model.vocab_size >= 259)"
        )
    key = cache_key(fingerprint, vocab)
    root = cache_dir(cfg)
    tok_path = root / f"tokenizer-{key}.json"
    if tok_path.exists():
        tok = Tokenizer.from_file(str(tok_path))
        tok_hit = True
    else:
        if progress:
            print(f"[data] training byte-level BPE (vocab {vocab}) on {len(documents)} "
                  "documents", file=sys.stderr)
        tok = train_bpe(documents, vocab)
        save_tokenizer(tok, tok_path)
        tok_hit = False
    if tok.get_vocab_size() > vocab_size:
        raise ConfigError(
            f"data.tokenizer_vocab: tokenizer has {tok.get_vocab_size()} ids > "
            f"model.vocab_size {vocab_size}"
        )
    eos_id = tok.token_to_id(EOS_TOKEN)
    # tokens are keyed by the tokenizer's content too: they always match the tokenizer in use
    tok_hash = hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:12]
    tokens, hit = _cached_tokens(root / f"tokens-{key}-{tok_hash}.npy", tok, documents, eos_id,
                                 progress)
    return Tokenized(tok, tokens, eos_id, tok_hit and hit)


def user_tokens(
    documents: list[str], fingerprint: str, user: UserTokenizer, cfg: DataConfig,
    progress: bool = False,
) -> Tokenized:
    """The corpus encoded with the user's tokenizer file (cached by corpus, file hash and EOS)."""
    text = f"{_FILE_KEY_VERSION}:{fingerprint}:{user.sha256}:{user.eos_id}"
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    path = cache_dir(cfg) / f"tokens-file-{key}.npy"
    if progress and not path.exists():
        print(f"[data] encoding {len(documents)} documents with {user.describe()}",
              file=sys.stderr)
    tokens, hit = _cached_tokens(path, user.tokenizer, documents, user.eos_id, progress)
    return Tokenized(user.tokenizer, tokens, user.eos_id, hit)
