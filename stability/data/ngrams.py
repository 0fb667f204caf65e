"""The OLMo 2 repeated-n-gram detector, and a deterministic injector of such spans.

A span is "repeated" when an n-gram (n = 1..max_n tokens) occurs at least `min_repeats` times in
a row. For each n, `eq[i] = tok[i] == tok[i + n]`; a run of L consecutive true positions from s
is the periodic span [s, s + L + n) holding floor(L / n) + 1 repeats, so runs with
L >= (min_repeats - 1) * n are flagged. Everything is vectorized over a [B, T] array.
"""

from __future__ import annotations

import numpy as np


def _window_any(flags: np.ndarray, before: int, width: int) -> np.ndarray:
    """out[..., p] = any(flags[..., j]) for j in [p - before, p - before + width), clipped."""
    b, t = flags.shape
    cs = np.zeros((b, t + 1), dtype=np.int32)
    np.cumsum(flags, axis=1, out=cs[:, 1:])
    pos = np.arange(t)
    lo = np.clip(pos - before, 0, t)
    hi = np.clip(pos - before + width, 0, t)
    return (cs[:, hi] - cs[:, lo]) > 0


def repeated_ngram_mask(tokens: np.ndarray, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """Bool mask, same shape as `tokens` ([T] or [B, T]): True inside a repeated-n-gram span."""
    if min_repeats < 2 or max_n < 1:
        raise ValueError("min_repeats must be >= 2 and max_n >= 1")
    arr = np.asarray(tokens)
    squeeze = arr.ndim == 1
    rows = arr.reshape(1, -1) if squeeze else arr
    if rows.ndim != 2:
        raise ValueError(f"tokens must be 1-D or 2-D, got shape {arr.shape}")
    b, t = rows.shape
    mask = np.zeros((b, t), dtype=bool)
    for n in range(1, max_n + 1):
        need = (min_repeats - 1) * n  # equal positions a qualifying run must have
        if need + n > t:
            break
        eq = rows[:, :-n] == rows[:, n:]  # [B, T - n]
        cs = np.zeros((b, t - n + 1), dtype=np.int32)
        np.cumsum(eq, axis=1, out=cs[:, 1:])
        # full[j]: eq[j : j + need] all true, i.e. a qualifying window starts at j
        full = np.zeros((b, t), dtype=bool)
        full[:, : t - n - need + 1] = (cs[:, need:] - cs[:, : t - n - need + 1]) == need
        # every window start j covers tokens [j, j + need + n)
        mask |= _window_any(full, need + n - 1, need + n)
    return mask.reshape(arr.shape)


def inject_repeats(
    tokens: np.ndarray,
    rate: float,
    count: int,
    rng: np.random.Generator,
    max_n: int = 13,
    span_share: float = 0.5,
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Overwrite, in a share `rate` of rows, a span of one n-gram repeated `count` times.

    The number of rows is `rate * B` rounded stochastically (exact in expectation); n is drawn
    from the n-grams (1..max_n) whose `count` repeats fit in `span_share` of the row (at least
    n = 1, cut to fit the row), the n-gram is copied from the row itself, and the span starts at a
    random position. So a span leaves the rest of its row as it was: the filter masks the span,
    not the row. Returns a copy of `tokens` and the (row, start, end) spans.
    """
    out = np.array(tokens, copy=True)
    if out.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {out.shape}")
    b, t = out.shape
    k = min(b, int(np.floor(rate * b + rng.random())))
    spans: list[tuple[int, int, int]] = []
    if k <= 0 or t < 2:
        return out, spans
    for row in np.sort(rng.choice(b, size=k, replace=False)):
        longest = max(1, min(max_n, int(span_share * t) // count))
        n = int(rng.integers(1, longest + 1))
        src = int(rng.integers(0, t - n + 1))
        gram = out[row, src : src + n].copy()
        length = min(n * count, t)
        start = int(rng.integers(0, t - length + 1))
        out[row, start : start + length] = np.resize(gram, length)
        spans.append((int(row), start, start + length))
    return out, spans
