"""Per-pixel downsampling of step series into one chart's columns (the dashboard server's side).

A chart asks for a step range [x0, x1] and its width in pixels; its traces come back on one x grid
(uPlot draws aligned columns), so the payload grows with the width, not with the run length:

- raw: when the union of the traces' steps in the range fits the width, those steps, with each
  trace's value there (NaN where it has no point: the page bridges such holes);
- buckets: otherwise `slots` columns, pairs of them making a bucket. A run puts its bucket min and
  max in the two slots in the order they occurred, so a one-step spike survives any zoom level; a
  group (an arm's seeds) puts in each slot the mean over its runs of each run's mean there, with
  the min and max over runs as the seed band.

Non-finite values (NaN, the inf of a diverged step) are left out of buckets and are NaN in raw
mode. `chart_json` writes the answer with `slots` capped so that a chart of many traces stays
light (`MAX_VALUES` numbers in all); the static page runs the same algorithm in app.js.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_VALUES = 24_000  # y numbers per chart answer, all traces together (~170 KB of JSON)
MIN_SLOTS, MAX_SLOTS = 32, 4000


@dataclass(frozen=True)
class Trace:
    """One line of a chart: a run's series (one pair of arrays) or a group's (one per run)."""

    parts: tuple[tuple[np.ndarray, np.ndarray], ...]
    group: bool = False


@dataclass
class Columns:
    """A chart's columns: x, then per trace y (and lo / hi for a group), NaN for no value."""

    x: np.ndarray
    ys: list[dict[str, np.ndarray]]
    raw: bool
    bucket: float  # steps per bucket (1 in raw mode)


def window(x: np.ndarray, y: np.ndarray, x0: float, x1: float) -> tuple[np.ndarray, np.ndarray]:
    """The points with x0 <= step <= x1 (x sorted)."""
    a, b = np.searchsorted(x, x0, "left"), np.searchsorted(x, x1, "right")
    return x[a:b], y[a:b]


def slots_for(traces: Sequence[Trace], px: int, max_values: int = MAX_VALUES) -> int:
    """Columns for a chart `px` wide: at most one per pixel and `max_values` numbers in all (even)."""
    arrays = sum(3 if t.group else 1 for t in traces) or 1
    n = min(int(px), max_values // arrays, MAX_SLOTS)
    return max(MIN_SLOTS, n - n % 2)


def columns(traces: Sequence[Trace], x0: float, x1: float, slots: int) -> Columns:
    """The chart's columns for [x0, x1] on `slots` columns (see the module docstring)."""
    cut = [[window(x, y, x0, x1) for x, y in t.parts] for t in traces]
    counts = [p[0].size for parts in cut for p in parts]
    if not counts or max(counts) <= slots:
        union = np.unique(np.concatenate([p[0] for parts in cut for p in parts] or [np.zeros(0)]))
        if union.size <= slots:
            return Columns(union, [_raw(parts, union, t.group) for t, parts in zip(traces, cut)], True, 1.0)
    span = max(float(x1) - float(x0), 1e-9)
    half = span / slots
    x = float(x0) + half * (np.arange(slots) + 0.5)
    ys = [_group_buckets(parts, x0, half, slots) if t.group else _minmax(parts[0], x0, half, slots)
          for t, parts in zip(traces, cut)]
    return Columns(x, ys, False, 2 * half)


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(y)
    return (x, y) if keep.all() else (x[keep], y[keep])


def _slot_of(x: np.ndarray, x0: float, half: float, slots: int) -> np.ndarray:
    return np.clip(((x - x0) / half).astype(np.int64), 0, slots - 1)


def _minmax(part: tuple[np.ndarray, np.ndarray], x0: float, half: float, slots: int) -> dict[str, np.ndarray]:
    """A run's bucket min and max in the order they occurred, two slots per bucket."""
    out = np.full(slots, np.nan)
    x, y = _finite(*part)
    if not x.size:
        return {"y": out}
    bucket = _slot_of(x, x0, half, slots) // 2
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    lo, hi = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
    which = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, y.size]))
    pos = np.arange(y.size)
    big = y.size + 1
    first_lo = np.minimum.reduceat(np.where(y == lo[which], pos, big), starts)
    first_hi = np.minimum.reduceat(np.where(y == hi[which], pos, big), starts)
    lo_first = first_lo <= first_hi
    b = bucket[starts]
    out[2 * b] = np.where(lo_first, lo, hi)
    out[2 * b + 1] = np.where(lo_first, hi, lo)
    return {"y": out}


def _slot_means(part: tuple[np.ndarray, np.ndarray], x0: float, half: float, slots: int) -> np.ndarray:
    out = np.full(slots, np.nan)
    x, y = _finite(*part)
    if x.size:
        slot = _slot_of(x, x0, half, slots)
        starts = np.flatnonzero(np.r_[True, slot[1:] != slot[:-1]])
        out[slot[starts]] = np.add.reduceat(y, starts) / np.diff(np.r_[starts, y.size])
    return out


def _band(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, min and max over runs (rows) per column, NaN where no run has a value."""
    if not rows.shape[0]:
        empty = np.full(rows.shape[1], np.nan)
        return {"y": empty, "lo": empty, "hi": empty}
    have = np.isfinite(rows).any(axis=0)
    filled = np.where(np.isfinite(rows), rows, 0.0)
    n = np.isfinite(rows).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(have, filled.sum(axis=0) / n, np.nan)
    lo = np.where(have, np.where(np.isfinite(rows), rows, np.inf).min(axis=0), np.nan)
    hi = np.where(have, np.where(np.isfinite(rows), rows, -np.inf).max(axis=0), np.nan)
    return {"y": mean, "lo": lo, "hi": hi}


def _group_buckets(parts: list[tuple[np.ndarray, np.ndarray]], x0: float, half: float, slots: int
                   ) -> dict[str, np.ndarray]:
    rows = np.array([_slot_means(p, x0, half, slots) for p in parts]).reshape(len(parts), slots)
    return _band(rows)


def _raw(parts: list[tuple[np.ndarray, np.ndarray]], union: np.ndarray, group: bool) -> dict[str, np.ndarray]:
    rows = np.full((len(parts), union.size), np.nan)
    for i, (x, y) in enumerate(parts):
        rows[i, np.searchsorted(union, x)] = np.where(np.isfinite(y), y, np.nan)
    if group:
        return _band(rows)
    return {"y": rows[0] if len(parts) else np.full(union.size, np.nan)}


def minmax_points(x: np.ndarray, y: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """A series thinned to the points of each bucket's min and max, at their own steps (for the
    static page, which re-buckets them for its views); unchanged when it is short enough. A
    non-finite point is kept where it falls (it marks a divergence)."""
    if x.size <= 2 * n_buckets:
        return x, y
    bucket = _slot_of(x, float(x[0]), max(float(x[-1] - x[0]), 1e-9) / n_buckets, n_buckets)
    ys = np.where(np.isfinite(y), y, np.nan)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    which = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, y.size]))
    pos = np.arange(y.size)
    lo = np.fmin.reduceat(ys, starts)
    hi = np.fmax.reduceat(ys, starts)
    big = y.size + 1
    keep = np.concatenate([np.minimum.reduceat(np.where(ys == lo[which], pos, big), starts),
                           np.minimum.reduceat(np.where(ys == hi[which], pos, big), starts),
                           np.flatnonzero(~np.isfinite(y)), [0, y.size - 1]])
    keep = np.unique(keep[keep < y.size])
    return x[keep], y[keep]


# ----------------------------------------------------------------------------------------- JSON
def num_list(a: np.ndarray, digits: int = 5) -> str:
    """A JSON array of numbers to `digits` significant digits, non-finite values as null."""
    fmt = f"{{:.{digits}g}}".format
    values = np.asarray(a, float).tolist()
    return "[" + ",".join("null" if not math.isfinite(v) else fmt(v) for v in values) + "]"


def step_list(x: np.ndarray) -> str:
    """Steps as JSON: integers as such, bucket centres to 0.1 step."""
    if x.size and np.all(x == np.round(x)):
        return "[" + ",".join(str(int(v)) for v in x.tolist()) + "]"
    return "[" + ",".join(f"{v:.1f}" for v in x.tolist()) + "]"


def chart_json(traces: Sequence[Trace], x0: float, x1: float, px: int,
               max_values: int = MAX_VALUES) -> str:
    """The JSON answer for one chart: {x0, x1, raw, bucket, x, traces: [{y[, lo, hi]}]}."""
    cols = columns(traces, x0, x1, slots_for(traces, px, max_values))
    parts = [",".join(f'"{k}":{num_list(v)}' for k, v in ys.items()) for ys in cols.ys]
    return (f'{{"x0":{float(x0)!r},"x1":{float(x1)!r},"raw":{"true" if cols.raw else "false"},'
            f'"bucket":{cols.bucket:.6g},"x":{step_list(cols.x)},'
            f'"traces":[{",".join("{" + p + "}" for p in parts)}]}}')
