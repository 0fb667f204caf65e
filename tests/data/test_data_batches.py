"""Batches: stateless, seeded order, epochs, labels, injection and the n-gram loss mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stability.data import IGNORE_INDEX, build_data


@pytest.fixture
def data(make_cfg, text_folder):
    root, _ = text_folder
    return build_data(make_cfg(corpus=str(root)), vocab_size=400, seq_len=15, seed=1)


def rows_of(data, batch) -> np.ndarray:
    """Training-row index of each batch row (rows are unique in this corpus)."""
    full = np.concatenate([batch.input_ids.numpy(), batch.labels.numpy()[:, -1:]], axis=1)
    lookup = {data.train[i].tobytes(): i for i in range(data.train.shape[0])}
    return np.array([lookup[r.astype(data.train.dtype).tobytes()] for r in full])


def test_batch_types_and_labels(data) -> None:
    b = data.train_batch(3, 8)
    assert b.input_ids.shape == b.labels.shape == b.doc_ids.shape == (8, 15)
    assert b.input_ids.dtype == b.labels.dtype == torch.long and b.doc_ids.dtype == torch.int32
    torch.testing.assert_close(b.labels[:, :-1], b.input_ids[:, 1:])
    rows = data.train_rows(3, 8)
    np.testing.assert_array_equal(b.labels.numpy(), data.train[rows][:, 1:])
    np.testing.assert_array_equal(b.doc_ids.numpy(), data.train_doc_ids[rows][:, :-1])
    assert b.n_masked == 0 and (b.labels != IGNORE_INDEX).all()
    moved = b.to("cpu")
    assert torch.equal(moved.input_ids, b.input_ids) and moved.n_masked == b.n_masked


def test_same_seed_same_batches_other_seed_other_order(data, make_cfg, text_folder) -> None:
    root, _ = text_folder
    again = build_data(make_cfg(corpus=str(root)), vocab_size=400, seq_len=15, seed=1)
    other = build_data(make_cfg(corpus=str(root)), vocab_size=400, seq_len=15, seed=2)
    for step in (0, 5, 17):
        a, b = data.train_batch(step, 4), again.train_batch(step, 4)
        assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(data.train_batch(0, 8).input_ids, other.train_batch(0, 8).input_ids)


def test_resume_needs_no_state(data, make_cfg, text_folder) -> None:
    root, _ = text_folder
    sequential = [data.train_batch(step, 6) for step in range(12)]
    fresh = build_data(make_cfg(corpus=str(root)), vocab_size=400, seq_len=15, seed=1)
    for k in (11, 4, 0, 7):
        assert torch.equal(fresh.train_batch(k, 6).input_ids, sequential[k].input_ids)
        assert torch.equal(fresh.train_batch(k, 6).doc_ids, sequential[k].doc_ids)


def test_epochs_wrap_with_new_permutation(data) -> None:
    n = data.train.shape[0]
    batch = 7
    steps = (3 * n) // batch + 1
    order = np.concatenate([data.train_rows(s, batch) for s in range(steps)])
    epochs = [order[e * n : (e + 1) * n] for e in range(3)]
    for e, rows in enumerate(epochs):
        assert sorted(rows.tolist()) == list(range(n))  # each epoch visits every row once
        expected = np.random.default_rng([1, e]).permutation(n)
        np.testing.assert_array_equal(rows, expected)
    assert not np.array_equal(epochs[0], epochs[1])
    # batch contents are those rows
    np.testing.assert_array_equal(rows_of(data, data.train_batch(2, batch)), order[14:21])


@pytest.fixture
def planted(make_cfg, tmp_path):
    """A token file of random ids with planted repeated spans at known positions."""
    rng = np.random.default_rng(0)
    seq_len, width = 255, 256
    tokens = rng.integers(0, 40_000, size=12 * width).astype(np.uint16)
    spans = []  # (row, start, end) in row coordinates
    for row, (n, reps, start) in enumerate([(1, 32, 0), (3, 40, 50), (13, 16, 10), (2, 31, 5)]):
        gram = rng.integers(0, 40_000, size=n).astype(np.uint16)
        length = n * reps
        tokens[row * width + start : row * width + start + length] = np.tile(gram, reps)
        spans.append((row, start, start + length, reps >= 32))
    path = tmp_path / "planted.npy"
    np.save(path, tokens)
    cfg = make_cfg(corpus=str(path), ngram_filter=True, val_fraction=0.1)
    return build_data(cfg, vocab_size=50_304, seq_len=seq_len, seed=0), spans


def test_filter_masks_exactly_the_planted_spans(planted) -> None:
    data, spans = planted
    assert data.tokenizer is None and data.eos_id == -1
    rows = np.arange(data.train.shape[0])
    batch = data._make_batch(np.asarray(data.train[rows]), data.train_doc_ids[rows])
    expected = np.zeros(batch.labels.shape, dtype=bool)
    for row, start, end, caught in spans:
        if caught:  # label j is the token at row position j + 1
            expected[row, max(start - 1, 0) : end - 1] = True
    np.testing.assert_array_equal(batch.labels.numpy() == IGNORE_INDEX, expected)
    assert batch.n_masked == expected.sum()
    # through train_batch too: masked labels follow the rows wherever they land
    b = data.train_batch(0, data.train.shape[0])
    order = data.train_rows(0, data.train.shape[0])
    np.testing.assert_array_equal(b.labels.numpy() == IGNORE_INDEX, expected[order])
    for vb in data.val_batches(4, 10):
        assert vb.n_masked == 0


def test_injection_in_train_batch(make_cfg, text_folder) -> None:
    root, _ = text_folder
    cfg = make_cfg(corpus=str(root), inject_repeats=0.5, inject_repeat_count=40,
                   ngram_filter=True, ngram_max_n=4, ngram_min_repeats=32)
    data = build_data(cfg, vocab_size=400, seq_len=255, seed=3)
    plain = build_data(make_cfg(corpus=str(root)), vocab_size=400, seq_len=255, seed=3)
    b1, b2 = data.train_batch(2, 8), data.train_batch(2, 8)
    assert torch.equal(b1.input_ids, b2.input_ids) and torch.equal(b1.labels, b2.labels)
    assert b1.n_masked > 0
    changed = (b1.input_ids != plain.train_batch(2, 8).input_ids).any(dim=1)
    assert int(changed.sum()) in (4, 5)  # share 0.5 of 8 rows, stochastically rounded
    assert not torch.equal(data.train_batch(3, 8).labels == IGNORE_INDEX,
                           b1.labels == IGNORE_INDEX)
    # validation batches are never injected
    for vb, pb in zip(data.val_batches(2, 3), plain.val_batches(2, 3), strict=True):
        assert torch.equal(vb.input_ids, pb.input_ids)


def test_val_batches_fixed_and_full(data) -> None:
    n_val = data.val.shape[0]
    first = data.val_batches(1, 3)
    assert len(first) == min(3, n_val)
    np.testing.assert_array_equal(first[0].labels.numpy(), data.val[:1, 1:])
    big = data.val_batches(n_val + 5, 2)
    assert len(big) == 1 and big[0].input_ids.shape[0] == n_val
    again = data.val_batches(1, 3)
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(first, again, strict=True))
