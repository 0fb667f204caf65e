"""Pack an EOS-separated token stream into fixed sequences, with document ids and a val split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ConfigError


@dataclass
class Packed:
    """Sequences of `seq_len + 1` tokens (input = [:-1], labels = [1:]) and their doc ids."""

    train: np.ndarray  # [N_train, seq_len + 1]
    val: np.ndarray  # [N_val, seq_len + 1]
    train_doc_ids: np.ndarray  # int32, same shape as train
    val_doc_ids: np.ndarray  # int32, same shape as val


def document_ids(stream: np.ndarray, eos_id: int) -> np.ndarray:
    """Doc id of every position: an EOS belongs to the document it ends; the next starts after."""
    ids = np.zeros(stream.shape[0], dtype=np.int32)
    if eos_id >= 0 and stream.shape[0] > 1:
        np.cumsum(stream[:-1] == eos_id, out=ids[1:])
    return ids


def concat_documents(docs: list[np.ndarray], eos_id: int) -> np.ndarray:
    """One stream: every document followed by `eos_id`."""
    if not docs:
        return np.zeros(0, dtype=np.uint16)
    eos = np.array([eos_id], dtype=docs[0].dtype)
    return np.concatenate([part for doc in docs for part in (doc, eos)])


def _rows(stream: np.ndarray, eos_id: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, width] rows of `stream` (a view, tail dropped) and their doc ids."""
    n = stream.shape[0] // width
    return (stream[: n * width].reshape(n, width),
            document_ids(stream[: n * width], eos_id).reshape(n, width))


def split_documents(
    stream: np.ndarray, eos_id: int, val_fraction: float, min_val_tokens: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, val) streams: every k-th whole document (k = round(1 / val_fraction)) is held out,
    so validation samples the whole corpus and no document straddles the split.

    None when the stream has no document boundaries or too few documents for a val row.
    """
    if eos_id < 0:
        return None
    ends = np.flatnonzero(stream == eos_id) + 1
    k = max(2, round(1 / val_fraction))
    if len(ends) < k:
        return None
    starts = np.concatenate(([0], ends[:-1]))
    held = (np.arange(len(ends)) % k) == k - 1
    val = np.concatenate([stream[a:b] for a, b, h in zip(starts, ends, held) if h])
    train = np.concatenate([stream[a:b] for a, b, h in zip(starts, ends, held) if not h]
                           + [stream[ends[-1]:]])
    if val.shape[0] < min_val_tokens or train.shape[0] < min_val_tokens:
        return None
    return train, val


def pack(
    stream: np.ndarray, eos_id: int, seq_len: int, val_fraction: float, by_document: bool = False
) -> Packed:
    """Cut `stream` into [N, seq_len + 1] rows (tail dropped) and hold some out for validation.

    With `by_document` (in-memory text corpora), every k-th document is held out (see
    `split_documents`); otherwise, and when that is impossible, the last
    `max(1, round(N * val_fraction))` rows are, as views of `stream` (no copy for memory-mapped
    token files). Either way deterministic and disjoint from training.
    """
    if seq_len < 1:
        raise ConfigError(f"train.seq_len: must be positive, got {seq_len}")
    width = seq_len + 1
    n = stream.shape[0] // width
    if n < 2:
        raise ConfigError(
            f"data.corpus: only {stream.shape[0]} tokens, need at least {2 * width} for "
            f"seq_len {seq_len} (2 sequences of seq_len + 1; raise data.max_bytes or use a "
            "bigger corpus)"
        )
    split = split_documents(stream, eos_id, val_fraction, width) if by_document else None
    if split is not None:
        (train, train_doc), (val, val_doc) = (_rows(part, eos_id, width) for part in split)
        return Packed(train, val, train_doc, val_doc)
    rows, doc = _rows(stream, eos_id, width)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    cut = n - n_val
    return Packed(rows[:cut], rows[cut:], doc[:cut], doc[cut:])
