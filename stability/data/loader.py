"""`build_data`: corpus -> tokenizer -> packed sequences -> stateless, seeded batches.

The tokenizer is the locally trained BPE, or the user's `tokenizer.json` (`data.tokenizer`),
loaded and checked against `model.vocab_size` before the corpus is read, so a tokenizer too
large for the model fails in a second with nothing written.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer

from .config import DataConfig
from .corpus import TextCorpus, TokenCorpus, load_corpus
from .hf_tokenizer import UserTokenizer, id_count, load_user_tokenizer
from .ngrams import inject_repeats, repeated_ngram_mask
from .packing import pack
from .tokenizer import Tokenized, tokenizer_and_tokens, user_tokens

IGNORE_INDEX = -100
_INJECT_TAG = 0x1A7  # separates the injection RNG stream from the epoch permutations
_BAD_TAG = 0xBAD  # ...and the corrupted batches' tokens


@dataclass
class Batch:
    """One batch: `labels` are the next tokens, -100 where ignored (repeated-n-gram spans)."""

    input_ids: torch.Tensor  # long [B, T]
    labels: torch.Tensor  # long [B, T]
    doc_ids: torch.Tensor  # int32 [B, T]
    n_masked: int = 0  # labels masked by the n-gram filter

    def to(self, device: torch.device | str) -> Batch:
        """A copy on `device` (non-blocking copies)."""
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.doc_ids.to(device, non_blocking=True),
            self.n_masked,
        )


@dataclass(eq=False)
class PackedData:
    """Packed train/val sequences of `seq_len + 1` tokens and the batch schedule over them."""

    train: np.ndarray  # [N_train, seq_len + 1]
    val: np.ndarray  # [N_val, seq_len + 1]
    train_doc_ids: np.ndarray  # int32 [N_train, seq_len + 1]
    val_doc_ids: np.ndarray  # int32 [N_val, seq_len + 1]
    eos_id: int
    vocab_used: int
    fingerprint: str  # the corpus; with a tokenizer file also that file and its EOS id
    stats: dict
    tokenizer: Tokenizer | None
    cfg: DataConfig
    seed: int
    seq_len: int
    _perms: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The training-row order of `epoch`: a permutation from `default_rng([seed, epoch])`."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.train.shape[0])
            if len(self._perms) >= 4:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = perm
        return perm

    def train_rows(self, step: int, batch_size: int) -> np.ndarray:
        """Training-row indices of batch `step`: sample i = step * batch_size + j, epoch-wise."""
        n = self.train.shape[0]
        sample = step * batch_size + np.arange(batch_size, dtype=np.int64)
        epochs, pos = np.divmod(sample, n)
        rows = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            rows[sel] = self.epoch_order(int(epoch))[pos[sel]]
        return rows

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """Batch `step`: a pure function of (seed, step, batch_size); resuming needs no state."""
        rows = self.train_rows(step, batch_size)
        tokens = np.asarray(self.train[rows])
        if self.cfg.inject_repeats > 0:
            rng = np.random.default_rng([self.seed, step, _INJECT_TAG])
            tokens, _ = inject_repeats(
                tokens, self.cfg.inject_repeats, self.cfg.inject_repeat_count, rng,
                self.cfg.ngram_max_n, self.cfg.inject_span_share,
            )
        if step in self.cfg.bad_batches:  # a corrupted shard: every token uniform at random
            rng = np.random.default_rng([self.seed, step, _BAD_TAG])
            tokens = rng.integers(0, self.vocab_used, size=tokens.shape).astype(tokens.dtype)
        return self._make_batch(tokens, np.asarray(self.train_doc_ids[rows]))

    def val_batches(self, batch_size: int, max_batches: int = 0) -> list[Batch]:
        """Fixed validation batches in order (filter applied when on, never injection).

        Full batches only, at most `max_batches` (<= 0: all); when there are fewer than
        `batch_size` validation rows, one batch holds them all.
        """
        n = self.val.shape[0]
        count = max(1, n // batch_size)
        if max_batches > 0:
            count = min(count, max_batches)
        out = []
        for b in range(count):
            sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
            out.append(self._make_batch(np.asarray(self.val[sl]), np.asarray(self.val_doc_ids[sl])))
        return out

    def _make_batch(self, tokens: np.ndarray, doc_ids: np.ndarray) -> Batch:
        labels = tokens[:, 1:].astype(np.int64)
        n_masked = 0
        if self.cfg.ngram_filter:
            mask = repeated_ngram_mask(tokens, self.cfg.ngram_max_n, self.cfg.ngram_min_repeats)
            label_mask = mask[:, 1:]
            n_masked = int(label_mask.sum())
            labels[label_mask] = IGNORE_INDEX
        return Batch(
            input_ids=torch.from_numpy(tokens[:, :-1].astype(np.int64)),
            labels=torch.from_numpy(labels),
            doc_ids=torch.from_numpy(np.ascontiguousarray(doc_ids[:, :-1], dtype=np.int32)),
            n_masked=n_masked,
        )


def _tokenize(
    corpus: TextCorpus, user: UserTokenizer | None, cfg: DataConfig, vocab_size: int,
    progress: bool,
) -> tuple[Tokenized, str, str]:
    """The token stream, the data fingerprint and a description of the tokenizer used."""
    if user is None:
        done = tokenizer_and_tokens(corpus.documents, corpus.fingerprint, cfg, vocab_size,
                                    progress)
        desc = f"byte-level BPE trained on the corpus ({done.tokenizer.get_vocab_size()} ids)"
        return done, corpus.fingerprint, desc
    done = user_tokens(corpus.documents, corpus.fingerprint, user, cfg, progress)
    return done, user.fingerprint(corpus.fingerprint), user.describe()


def _stats(corpus: TextCorpus | TokenCorpus, stream: np.ndarray, vocab_used: int, hit: bool,
           tokenizer: str) -> dict:
    """What was read and how it was tokenized (printed by the CLI, kept on `PackedData`)."""
    if isinstance(corpus, TextCorpus):
        documents, n_bytes = len(corpus.documents), corpus.n_bytes
    else:
        documents, n_bytes = corpus.n_documents, corpus.tokens.nbytes
    return {
        "source": corpus.description,
        "tokenizer": tokenizer,
        "documents": documents,
        "bytes": n_bytes,
        "tokens": int(stream.shape[0]),
        "vocab_used": vocab_used,
        "cache_hit": hit,
    }


def build_data(
    cfg: DataConfig, *, vocab_size: int, seq_len: int, seed: int, progress: bool = False
) -> PackedData:
    """Read, tokenize (cached), pack and split the corpus of `cfg` for a model of `vocab_size`."""
    cfg.validate()
    start = time.perf_counter()
    user = load_user_tokenizer(cfg, vocab_size) if cfg.tokenizer else None
    corpus = load_corpus(cfg, vocab_size)
    if isinstance(corpus, TextCorpus):
        done, fingerprint, tok_desc = _tokenize(corpus, user, cfg, vocab_size, progress)
        tok, stream, eos_id, hit = done.tokenizer, done.tokens, done.eos_id, done.cache_hit
        vocab_used = id_count(tok)
    else:
        tok, stream, hit, fingerprint = None, corpus.tokens, True, corpus.fingerprint
        eos_id = corpus.eos_id
        vocab_used = max(corpus.extra["max_id"], eos_id) + 1
        tok_desc = "none (pre-tokenized)"
    packed = pack(stream, eos_id, seq_len, cfg.val_fraction,
                  by_document=isinstance(corpus, TextCorpus))
    stats = _stats(corpus, stream, vocab_used, hit, tok_desc)
    stats["train_sequences"] = int(packed.train.shape[0])
    stats["val_sequences"] = int(packed.val.shape[0])
    stats["seconds"] = round(time.perf_counter() - start, 3)
    if progress:
        print(
            f"[data] {stats['documents']} docs, {stats['tokens']} tokens ({tok_desc}) -> "
            f"{stats['train_sequences']} train / {stats['val_sequences']} val sequences of "
            f"{seq_len + 1} ({stats['seconds']} s, cache {'hit' if hit else 'miss'})",
            file=sys.stderr,
        )
    return PackedData(
        train=packed.train,
        val=packed.val,
        train_doc_ids=packed.train_doc_ids,
        val_doc_ids=packed.val_doc_ids,
        eos_id=eos_id,
        vocab_used=vocab_used,
        fingerprint=fingerprint,
        stats=stats,
        tokenizer=tok,
        cfg=cfg,
        seed=seed,
        seq_len=seq_len,
    )
