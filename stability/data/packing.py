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


def pack(stream: np.ndarray, eos_id: int, seq_len: int, val_fraction: float) -> Packed:
    """Cut `stream` into [N, seq_len + 1] rows (tail dropped); the last share goes to val.

    Rows are views of `stream` (no copy for memory-mapped token files). The validation split is
    the last `max(1, round(N * val_fraction))` rows: deterministic and disjoint from training.
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
    rows = stream[: n * width].reshape(n, width)
    doc = document_ids(stream[: n * width], eos_id).reshape(n, width)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    cut = n - n_val
    return Packed(rows[:cut], rows[cut:], doc[:cut], doc[cut:])
