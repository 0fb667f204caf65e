"""The repeated-n-gram detector against a brute-force reference, and the injector."""

from __future__ import annotations

import numpy as np
import pytest

from stability.data import inject_repeats, repeated_ngram_mask


def brute_force_mask(tokens: np.ndarray, max_n: int, min_repeats: int) -> np.ndarray:
    """For every n and start, count whole consecutive repeats; mark spans with enough."""
    tokens = np.atleast_2d(tokens)
    mask = np.zeros(tokens.shape, dtype=bool)
    for b, row in enumerate(tokens.tolist()):
        t = len(row)
        for n in range(1, max_n + 1):
            for s in range(t - n + 1):
                gram = row[s : s + n]
                k = 1
                while s + (k + 1) * n <= t and row[s + k * n : s + (k + 1) * n] == gram:
                    k += 1
                if k >= min_repeats:
                    mask[b, s : s + k * n] = True
    return mask


def plant(row: np.ndarray, start: int, gram: list[int], repeats: int) -> tuple[int, int]:
    span = np.tile(np.array(gram, dtype=row.dtype), repeats)
    row[start : start + span.size] = span
    return start, start + span.size


@pytest.mark.parametrize("vocab", [2, 3, 1000])
@pytest.mark.parametrize("max_n,min_repeats", [(1, 2), (3, 3), (5, 4), (6, 2)])
def test_matches_brute_force_on_random_rows(vocab: int, max_n: int, min_repeats: int) -> None:
    rng = np.random.default_rng(vocab * 100 + max_n * 10 + min_repeats)
    tokens = rng.integers(0, vocab, size=(6, 90))
    for row in tokens:  # planted repeats of several n, anywhere
        n = int(rng.integers(1, max_n + 1))
        reps = int(rng.integers(min_repeats - 1, min_repeats + 3))
        start = int(rng.integers(0, 90 - n * reps + 1))
        plant(row, start, rng.integers(0, vocab, size=n).tolist(), reps)
    expected = brute_force_mask(tokens, max_n, min_repeats)
    np.testing.assert_array_equal(repeated_ngram_mask(tokens, max_n, min_repeats), expected)


def test_threshold_is_exact() -> None:
    base = np.arange(100, 200)
    for n in (1, 2, 5):
        below, at = base.copy(), base.copy()
        plant(below, 10, list(range(n)), 7)
        s, e = plant(at, 10, list(range(n)), 8)
        assert not repeated_ngram_mask(below, 5, 8).any()
        got = repeated_ngram_mask(at, 5, 8)
        assert got[s:e].all() and got.sum() == e - s


def test_span_at_row_start_and_end() -> None:
    row = np.arange(1000, 1064)
    s1, e1 = plant(row, 0, [1, 2], 4)
    s2, e2 = plant(row, 64 - 12, [7, 8, 9], 4)
    assert e2 == 64
    expected = np.zeros(64, dtype=bool)
    expected[s1:e1] = expected[s2:e2] = True
    np.testing.assert_array_equal(repeated_ngram_mask(row, 3, 4), expected)
    np.testing.assert_array_equal(brute_force_mask(row, 3, 4)[0], expected)


def test_overlapping_periods_and_partial_tail() -> None:
    # "aaaa..." repeats with n = 1, 2, 3; "abcabcab" ends in a partial repeat
    row = np.array([9] * 5 + [1] * 12 + [5, 6] + [1, 2, 3] * 4 + [1, 2] + [7, 8])
    for max_n, reps in [(1, 12), (2, 6), (3, 4), (4, 3)]:
        np.testing.assert_array_equal(
            repeated_ngram_mask(row, max_n, reps), brute_force_mask(row, max_n, reps)[0]
        )
    mask = repeated_ngram_mask(row, 3, 4)
    assert mask[5:17].all() and mask[19:33].all() and not mask[33:].any()


def test_default_parameters_on_long_rows() -> None:
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 50_000, size=(4, 1024))
    spans = []
    for b, (n, reps) in enumerate([(1, 32), (13, 32), (7, 31), (4, 40)]):
        gram = rng.integers(0, 50_000, n).tolist()
        spans.append((b, *plant(tokens[b], 100 + 50 * b, gram, reps)))
    mask = repeated_ngram_mask(tokens)  # n = 1..13, 32 repeats
    expected = np.zeros_like(mask)
    for b, s, e in spans:
        if b != 2:  # 31 repeats: below the threshold
            expected[b, s:e] = True
    np.testing.assert_array_equal(mask, expected)


def test_shape_preserved_and_short_rows() -> None:
    assert repeated_ngram_mask(np.zeros(5, dtype=np.uint16), 13, 32).shape == (5,)
    assert not repeated_ngram_mask(np.zeros((2, 5), dtype=np.uint16), 13, 32).any()
    assert repeated_ngram_mask(np.zeros((2, 5), dtype=np.uint16), 13, 5).all()


def test_injection_is_caught_at_requested_share_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 50_000, size=(200, 600)).astype(np.uint32)
    before = tokens.copy()
    out, spans = inject_repeats(tokens, 0.25, 40, np.random.default_rng(11), max_n=13)
    assert abs(len(spans) - 50) <= 1
    rows = {r for r, _, _ in spans}
    assert len(rows) == len(spans)
    mask = repeated_ngram_mask(out, 13, 32)
    for r, s, e in spans:
        assert mask[r, s:e].all()
    untouched = np.array(sorted(set(range(200)) - rows))
    np.testing.assert_array_equal(out[untouched], tokens[untouched])
    assert not mask[untouched].any()
    np.testing.assert_array_equal(tokens, before)  # the input is not modified
    out2, spans2 = inject_repeats(tokens, 0.25, 40, np.random.default_rng(11), max_n=13)
    np.testing.assert_array_equal(out, out2)
    assert spans == spans2
    out3, _ = inject_repeats(tokens, 0.25, 40, np.random.default_rng(12), max_n=13)
    assert not np.array_equal(out, out3)


def test_injection_truncates_and_handles_edge_rates() -> None:
    tokens = np.arange(40).reshape(2, 20)
    out, spans = inject_repeats(tokens, 1.0, 64, np.random.default_rng(0), max_n=3)
    assert [(s, e) for _, s, e in spans] == [(0, 20), (0, 20)]
    none, spans0 = inject_repeats(tokens, 0.0, 64, np.random.default_rng(0))
    assert spans0 == [] and np.array_equal(none, tokens)
    assert out.shape == tokens.shape


def test_an_injected_span_leaves_most_of_its_row_alone() -> None:
    """32 repeats of n-grams that fit in half a row: the span is masked, the row is not."""
    tokens = np.random.default_rng(5).integers(0, 50_000, size=(400, 512)).astype(np.uint32)
    out, spans = inject_repeats(tokens, 1.0, 32, np.random.default_rng(1), max_n=13)
    lengths = sorted({e - s for _, s, e in spans})
    assert lengths == [32 * n for n in range(1, 9)]  # n = 1..8: 8 * 32 = 256 = half of 512
    mask = repeated_ngram_mask(out, 13, 32)
    assert mask.mean(axis=1).max() <= 0.5 + 13 / 512  # a detected span may extend by < one n-gram
    assert (mask.sum(axis=1) >= 32).all()  # and every row has its span caught
