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
    assert data.stats["documents"] == len(docs)
    n_tokens = (data.train.shape[0] + data.val.shape[0]) * 64
    assert data.val.shape[0] >= 1 and n_tokens <= data.stats["tokens"]
    tok = data.tokenizer
    k = round(1 / 0.1)  # every 10th document is held out
    expected = {"train": [d for i, d in enumerate(docs) if i % k != k - 1],
                "val": [d for i, d in enumerate(docs) if i % k == k - 1]}
    for split, rows, doc_ids in (("train", data.train, data.train_doc_ids),
                                 ("val", data.val, data.val_doc_ids)):
        stream = rows.ravel()
        # decode: each split's stream is its documents joined by EOS, cut at the last whole row
        eos_at = np.flatnonzero(stream == data.eos_id)
        pieces = np.split(stream, eos_at + 1)
        for i, piece in enumerate(pieces[:-1]):
            assert piece[-1] == data.eos_id
            assert tok.decode(piece[:-1].tolist()) == expected[split][i]
        # doc ids: constant within a document, the EOS belongs to it, +1 right after each EOS
        ids = doc_ids.ravel()
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
    # whole documents are held out: no val row shares a document's text with a train row
    eos = a.eos_id

    def docs(rows):
        stream = rows.ravel()
        cuts = np.flatnonzero(stream == eos) + 1
        return {tuple(d) for d in np.split(stream, cuts)[1:-1] if len(d) > 1}

    assert docs(a.val) and not docs(a.val) & docs(a.train)


def test_split_documents_every_kth() -> None:
    from stability.data.packing import split_documents

    eos = 0
    docs = [np.full(5, i + 1, dtype=np.uint16) for i in range(10)]
    stream = np.concatenate([np.append(d, eos) for d in docs] + [np.array([7, 7], np.uint16)])
    train, val = split_documents(stream, eos, val_fraction=0.2, min_val_tokens=4)
    # k = 5: documents 4 and 9 (0-based) are held out, the tail stays in training
    np.testing.assert_array_equal(val, np.concatenate([np.append(docs[i], eos) for i in (4, 9)]))
    assert train.shape[0] == stream.shape[0] - val.shape[0] and train[-1] == 7
    assert split_documents(stream, -1, 0.2, 4) is None  # no boundaries
    assert split_documents(stream[:12], eos, 0.2, 4) is None  # too few documents


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
