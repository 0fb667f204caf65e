"""Small inline-SVG line charts for the HTML dashboard: no JavaScript, no fonts, no external files.

`line_chart` draws several series on shared axes with tick labels, an optional log-y axis,
vertical markers (spikes in red, divergence dashed dark red, each with a `<title>` tooltip) and a
legend. Long series are thinned by `downsample` (min and max per bucket, requested points kept).
The `<svg>` carries `data-x-domain` and `data-plot` so tests (and readers) can map steps to pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#637939", "#8c6d31")
SPIKE_COLOR = "#d62728"
DIVERGED_COLOR = "#7b0000"
MAX_POINTS = 600


def esc(value: object) -> str:
    """`html.escape(str(value), quote=True)`: safe in text and in quoted attributes."""
    return escape(str(value), quote=True)


@dataclass
class Series:
    """One line: `x` (steps) and `y` as arrays; non-finite y values leave a gap."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: str | None = None
    width: float = 1.5
    dash: str | None = None


@dataclass
class Marker:
    """A vertical marker at `x`; `kind` is "spike" (red) or "diverged" (dashed dark red)."""

    x: float
    title: str
    kind: str = "spike"


@dataclass(frozen=True)
class Scale:
    """Maps data values in [lo, hi] to pixels in [a, b] (linear, or in log10 space)."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    def _t(self, v: np.ndarray | float) -> np.ndarray | float:
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                v, lo, hi = np.log10(v), math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        return (np.asarray(v, dtype=float) - lo) / (hi - lo)

    def __call__(self, v: np.ndarray | float) -> np.ndarray | float:
        return self.a + self._t(v) * (self.b - self.a)


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS,
               keep_x: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """At most about `max_points` points: first, last, min and max of each bucket, the first
    non-finite point of each bucket (so gaps survive) and every point whose x is in `keep_x`."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    if n <= max_points:
        return x, y
    n_buckets = max(1, max_points // 2)
    size = math.ceil(n / n_buckets)
    pad = n_buckets * size - n
    finite = np.isfinite(y)
    lo = np.pad(np.where(finite, y, np.inf), (0, pad), constant_values=np.inf).reshape(n_buckets, size)
    hi = np.pad(np.where(finite, y, -np.inf), (0, pad), constant_values=-np.inf).reshape(n_buckets, size)
    bad = np.pad(~finite, (0, pad), constant_values=False).reshape(n_buckets, size)
    offset = np.arange(n_buckets) * size
    picks = [offset + lo.argmin(axis=1), offset + hi.argmax(axis=1), [0, n - 1]]
    has_bad = bad.any(axis=1)
    picks.append((offset + bad.argmax(axis=1))[has_bad])
    if len(keep_x):
        picks.append(np.flatnonzero(np.isin(x, np.asarray(keep_x, dtype=float))))
    idx = np.unique(np.concatenate([np.asarray(p, dtype=int) for p in picks]))
    idx = idx[idx < n]
    return x[idx], y[idx]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) inside [lo, hi]."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo]
    raw = span / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(max(count, 0))]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 multiples of powers of ten inside [lo, hi] (powers only over four or more decades);
    linear nice ticks when fewer than two fit."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if k1 - k0 > 3 else (1, 2, 5)
    inside = [m * 10.0**k for k in range(k0, k1 + 1) for m in mults if lo <= m * 10.0**k <= hi]
    return inside if len(inside) >= 2 else nice_ticks(lo, hi, 4)


def fmt_tick(v: float) -> str:
    """Short tick label: 0.003, 1.25, 500, 12k, 1e-05."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 and float(v / 1000).is_integer():
        return f"{v / 1000:g}k"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


def _data_range(values: list[np.ndarray], log: bool) -> tuple[float, float] | None:
    vals = np.concatenate(values) if values else np.array([])
    vals = vals[np.isfinite(vals)]
    if log:
        vals = vals[vals > 0]
    if not vals.size:
        return None
    lo, hi = float(vals.min()), float(vals.max())
    if log:
        llo, lhi = math.log10(lo), math.log10(hi)
        pad = 0.05 * (lhi - llo) or 0.1
        return 10.0 ** (llo - pad), 10.0 ** (lhi + pad)
    pad = 0.05 * (hi - lo) or (0.1 * abs(hi) or 1.0)
    return lo - pad, hi + pad


def _path(px: np.ndarray, py: np.ndarray) -> str:
    """An SVG path through the finite points, starting a new subpath after each gap."""
    ok = np.isfinite(px) & np.isfinite(py)
    parts: list[str] = []
    pen_up = True
    for x, y, good in zip(px.tolist(), py.tolist(), ok.tolist()):
        if not good:
            pen_up = True
            continue
        parts.append(f"{'M' if pen_up else 'L'}{x:.1f} {y:.1f}")
        pen_up = False
    return " ".join(parts)


def _legend(series: Sequence[Series], colors: list[str], width: int, left: int, y0: float) -> tuple[str, int]:
    """Legend items in rows under the x axis; returns (svg, number of rows)."""
    items, x, row = [], float(left), 0
    for s, color in zip(series, colors):
        w = 22 + 6.5 * len(s.label)
        if x + w > width - 4 and x > left:
            x, row = float(left), row + 1
        y = y0 + 14 * row
        dash = f' stroke-dasharray="{esc(s.dash)}"' if s.dash else ""
        items.append(f'<line x1="{x:.0f}" y1="{y - 4:.0f}" x2="{x + 14:.0f}" y2="{y - 4:.0f}" '
                     f'stroke="{esc(color)}" stroke-width="2"{dash}/>'
                     f'<text x="{x + 18:.0f}" y="{y:.0f}">{esc(s.label)}</text>')
        x += w + 10
    return f'<g class="legend">{"".join(items)}</g>', (row + 1 if series else 0)


def _isolated(px: np.ndarray, py: np.ndarray) -> list[tuple[float, float]]:
    """Finite points with no finite neighbour: a path draws nothing for them, so they get a dot."""
    ok = np.isfinite(px) & np.isfinite(py)
    prev = np.concatenate([[False], ok[:-1]])
    nxt = np.concatenate([ok[1:], [False]])
    alone = ok & ~prev & ~nxt
    return list(zip(px[alone].tolist(), py[alone].tolist()))


def line_chart(series: Sequence[Series], *, title: str = "", width: int = 900, height: int = 240,
               log_y: bool = False, markers: Sequence[Marker] = (),
               x_range: tuple[float, float] | None = None, max_points: int = MAX_POINTS,
               x_label: str = "step") -> str:
    """An inline `<svg>` line chart; `height` is the plot box plus margins, the legend adds rows."""
    left, right, top, bottom = 58, 12, 22, 34
    colors = [s.color or PALETTE[i % len(PALETTE)] for i, s in enumerate(series)]
    spike_x = [m.x for m in markers if m.kind == "spike"]
    thinned = [downsample(s.x, s.y, max_points, spike_x) for s in series]
    if x_range is None:
        xs = [x for x, _ in thinned if x.size]
        x_range = (float(min(x.min() for x in xs)), float(max(x.max() for x in xs))) if xs else (0.0, 1.0)
    x0, x1 = x_range
    if x1 <= x0:
        x0, x1 = x0 - 1.0, x1 + 1.0
    visible = [y[(x >= x0) & (x <= x1)] for x, y in thinned]
    y_range = _data_range(visible, log_y)
    legend_svg, rows = _legend(series, colors, width, left, height - bottom + 30)
    total_h = height + 14 * max(rows - 1, 0)
    plot_w, plot_h = width - left - right, height - top - bottom - (14 if rows else 0)
    sx = Scale(x0, x1, left, left + plot_w)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{total_h}" '
           f'viewBox="0 0 {width} {total_h}" role="img" aria-label="{esc(title)}" '
           f'data-x-domain="{x0:g} {x1:g}" data-plot="{left} {top} {plot_w} {plot_h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<title>{esc(title)}</title>',
           f'<text class="chart-title" x="{left}" y="14" font-weight="bold">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>']
    for t in nice_ticks(x0, x1, max(2, plot_w // 110)):
        px = sx(t)
        out.append(f'<line x1="{px:.1f}" y1="{top + plot_h}" x2="{px:.1f}" y2="{top + plot_h + 4}" '
                   f'stroke="#666"/>'
                   f'<text x="{px:.1f}" y="{top + plot_h + 15}" text-anchor="middle">{fmt_tick(t)}</text>')
    out.append(f'<text x="{left + plot_w}" y="{top + plot_h + 27}" text-anchor="end" fill="#555">'
               f'{esc(x_label)}</text>')
    if y_range is None:
        out.append(f'<text class="no-data" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
                   f'text-anchor="middle" fill="#888">no data</text>')
    else:
        sy = Scale(y_range[0], y_range[1], top + plot_h, top, log=log_y)
        ticks = log_ticks(*y_range) if log_y else nice_ticks(*y_range, max(3, plot_h // 30))
        for t in ticks:
            py = sy(t)
            out.append(f'<line x1="{left}" y1="{py:.1f}" x2="{left + plot_w}" y2="{py:.1f}" stroke="#eee"/>'
                       f'<text x="{left - 4}" y="{py + 4:.1f}" text-anchor="end">{fmt_tick(t)}</text>')
        for (x, y), s, color in zip(thinned, series, colors):
            keep = (x >= x0) & (x <= x1)
            d = _path(np.asarray(sx(x[keep])), np.asarray(sy(y[keep])))
            dash = f' stroke-dasharray="{esc(s.dash)}"' if s.dash else ""
            out.append(f'<path class="series" data-label="{esc(s.label)}" d="{d}" fill="none" '
                       f'stroke="{esc(color)}" stroke-width="{s.width:g}" stroke-linejoin="round" '
                       f'stroke-linecap="round"{dash}/>')
            for px, py in _isolated(np.asarray(sx(x[keep])), np.asarray(sy(y[keep]))):
                out.append(f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="2.5" '
                           f'fill="{esc(color)}"/>')
    for m in markers:
        if not x0 <= m.x <= x1:
            continue
        px, spike = sx(m.x), m.kind == "spike"
        color, style = (SPIKE_COLOR, 'stroke-width="1" opacity="0.75"') if spike else (
            DIVERGED_COLOR, 'stroke-width="2" stroke-dasharray="5 3"')
        out.append(f'<g class="marker {esc(m.kind)}" data-x="{m.x:g}"><title>{esc(m.title)}</title>'
                   f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + plot_h}" '
                   f'stroke="{color}" {style}/>'
                   f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + plot_h}" stroke="transparent" '
                   f'stroke-width="7"/></g>')
        if not spike:
            out.append(f'<text x="{px - 3:.1f}" y="{top + 11}" text-anchor="end" fill="{color}">'
                       f'{esc(m.kind)}</text>')
    out.append(legend_svg)
    out.append("</svg>")
    return "".join(out)
