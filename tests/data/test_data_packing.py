"""Packing: round trip, document ids, shapes, the deterministic held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from stability.data import build_data
from stability.data.config import ConfigError
from stability.data.packing import document_ids, pack


def test_round_trip_doc_ids_and_split(make_cfg, text_folder) -> None:
    root, docs = text_folder
    data = build_data(make_cfg(corpus=str(root), val_fraction=0.1), vocab_size=400,
                      seq_len=63, seed=0)
    assert data.train.shape[1] == data.val.shape[1] == 64
    n = data.train.shape[0] + data.val.shape[0]
    assert data.val.shape[0] == max(1, round(n * 0.1))
    assert data.stats["documents"] == len(docs)
    stream = np.concatenate([data.train.ravel(), data.val.ravel()])
    assert stream.size == n * 64 <= data.stats["tokens"]
    # decode: the stream is the documents joined by EOS (cut at the last whole sequence)
    eos_at = np.flatnonzero(stream == data.eos_id)
    pieces = np.split(stream, eos_at + 1)
    tok = data.tokenizer
    for i, piece in enumerate(pieces[:-1]):
        assert piece[-1] == data.eos_id
        assert tok.decode(piece[:-1].tolist()) == docs[i]
    assert docs[len(pieces) - 1].startswith(tok.decode(pieces[-1].tolist()))
    # doc ids: constant within a document, the EOS belongs to it, +1 right after each EOS
    ids = np.concatenate([data.train_doc_ids.ravel(), data.val_doc_ids.ravel()])
    assert ids[0] == 0 and ids.dtype == np.int32
    steps = np.diff(ids)
    assert set(np.unique(steps).tolist()) <= {0, 1}
    np.testing.assert_array_equal(np.flatnonzero(steps), eos_at[eos_at < stream.size - 1])


def test_val_split_is_deterministic_and_disjoint(make_cfg, text_folder) -> None:
    root, _ = text_folder
    cfg = make_cfg(corpus=str(root), val_fraction=0.2)
    a = build_data(cfg, vocab_size=400, seq_len=31, seed=0)
    b = build_data(cfg, vocab_size=400, seq_len=31, seed=5)
    np.testing.assert_array_equal(a.val, b.val)
    np.testing.assert_array_equal(a.train, b.train)
    # the val rows are the last rows of the stream, the train rows the ones before them
    n_train = a.train.shape[0]
    rows = np.concatenate([a.train, a.val])
    np.testing.assert_array_equal(rows[n_train:], a.val)
    assert rows.shape[0] == n_train + a.val.shape[0]


def test_pack_views_and_minimum() -> None:
    stream = np.arange(50, dtype=np.uint16)
    packed = pack(stream, eos_id=-1, seq_len=9, val_fraction=0.02)
    assert packed.train.shape == (4, 10) and packed.val.shape == (1, 10)
    assert np.shares_memory(packed.train, stream)
    assert not packed.train_doc_ids.any()
    with pytest.raises(ConfigError, match=r"^data\.corpus: only 50 tokens, need at least 52"):
        pack(stream, eos_id=-1, seq_len=25, val_fraction=0.02)


def test_document_ids_rule() -> None:
    stream = np.array([5, 6, 0, 7, 0, 0, 8])
    np.testing.assert_array_equal(document_ids(stream, 0), [0, 0, 0, 1, 1, 2, 3])
    np.testing.assert_array_equal(document_ids(stream, -1), [0] * 7)


def test_too_small_corpus_errors(make_cfg, tmp_path) -> None:
    (tmp_path / "tiny.txt").write_text("just a few words")
    with pytest.raises(ConfigError, match=r"^data\.corpus: only \d+ tokens, need at least"):
        build_data(make_cfg(corpus=str(tmp_path / "tiny.txt")), vocab_size=300, seq_len=128,
                   seed=0)
