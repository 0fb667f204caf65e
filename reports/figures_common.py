"""Shared plumbing of the figure modules: figure creation, skip bookkeeping, run and series selection.

Figures are plain `matplotlib.figure.Figure` objects with an Agg canvas attached: nothing goes
through pyplot, so no global figure registry fills up and nothing needs closing.

Every figure carries `fig.skipped`, a dict {what: reason} of the arms, panels or runs it left out
(also logged on the "reports.figures" logger and summarised under the title). Artists the tests
and callers may look up carry a gid "kind|arm|..." (see the figure functions).
"""

from __future__ import annotations

import logging
import textwrap

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter

from reports import frames as F
from reports import style as S

log = logging.getLogger("reports.figures")

# statuses whose per-run summaries are final (a running run's numbers are still moving)
SETTLED = ("finished", "diverged")


class MissingData(ValueError):
    """The data a figure needs is not there; the message says what is missing."""


def panel_grid(n_panels: int, width: str = "double", *, max_columns: int | None = None) -> tuple[int, int]:
    """(rows, columns) for `n_panels` panels: as few rows as `max_columns` (default
    `style.MAX_COLUMNS[width]`) per row allow, filled evenly."""
    limit = max_columns or S.MAX_COLUMNS[S.check_width(width)]
    n = max(n_panels, 1)
    nrows = -(-n // limit)
    return nrows, -(-n // nrows)  # balanced rows: 4 panels make 2 x 2, not 3 + 1


def new_figure(name: str, nrows: int = 1, ncols: int = 1, *, width: str = "double",
               height: float | None = None, sharex: bool | str = False,
               sharey: bool | str = False) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure labelled `name` on an Agg canvas, `style.WIDTHS[width]` inches
    wide (a paper's column or text width), and its axes as a 2-D array.

    `height` defaults to `style.PANEL_HEIGHT[width]` per row plus room for the title and the
    legend below the panels.
    """
    inches = S.WIDTHS[S.check_width(width)]
    height = height if height is not None else S.PANEL_HEIGHT[width] * nrows + 0.9
    fig = Figure(figsize=(inches, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.set_label(name)
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.04, hspace=0.06)
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    fig.skipped = {}
    fig.width_name = width
    return fig, axes


def panel_figure(name: str, n_panels: int, *, width: str = "double", height: float | None = None,
                 sharex: bool | str = False, sharey: bool | str = False,
                 max_columns: int | None = None) -> tuple[Figure, list[Axes]]:
    """`new_figure` with `n_panels` panels wrapped into `panel_grid` rows; the unused cells of the
    last row are removed. Returns the panels in reading order."""
    nrows, ncols = panel_grid(n_panels, width, max_columns=max_columns)
    fig, axes = new_figure(name, nrows, ncols, width=width, height=height, sharex=sharex, sharey=sharey)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.remove()
    if sharex and nrows > 1:  # a removed cell leaves the panel above it without x tick labels
        for ax in flat[max(n_panels - ncols, 0):n_panels]:
            ax.xaxis.set_tick_params(labelbottom=True)
    return fig, flat[:n_panels]


def outer_labels(panels: list[Axes], xlabel: str | None, ylabel: str | None = None) -> None:
    """x labels on the bottom panel of each column, y labels on the first column (shared axes
    need them once); None leaves that axis' labels as they are."""
    for ax in panels:
        spec = ax.get_subplotspec()
        below = [p for p in panels if p.get_subplotspec().colspan.start == spec.colspan.start
                 and p.get_subplotspec().rowspan.start > spec.rowspan.start]
        if xlabel is not None and not below:
            ax.set_xlabel(xlabel)
        if ylabel is not None and spec.colspan.start == 0:
            ax.set_ylabel(ylabel)


LEGEND_CHARS = {"single": 56, "double": 118}  # legend characters per row at 7 pt


def figure_legend(fig: Figure, handles: list, *, title: str | None = None) -> None:
    """The figure's one legend, below the panels (outside the data), as many columns as fit."""
    if not handles:
        return
    chars = LEGEND_CHARS[getattr(fig, "width_name", "double")]
    longest = max(len(h.get_label()) for h in handles)
    ncols = max(1, min(len(handles), chars // (longest + 6), 5))  # + handle and spacing
    fig.legend(handles=row_major(handles, ncols), loc="outside lower center", ncols=ncols, title=title,
               handlelength=1.6, columnspacing=1.2)


def row_major(items: list, ncols: int) -> list:
    """`items` reordered so a legend, which fills column by column, reads them row by row."""
    return [items[i] for c in range(ncols) for i in range(c, len(items), ncols)]


def tick_text(x: float) -> str:
    """A tick label in plain numbers: "0.01", "1", "250", "17,000" (no 10^k, no 3x10^0)."""
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}".replace("-", "\u2212")
    return f"{x:.6g}".replace("-", "\u2212")


class PlainLogFormatter(Formatter):
    """Log-axis labels in plain numbers: every decade; within an axis spanning less than two
    decades also 2x and 5x (3x too under one decade), so a narrow log axis still has labels."""

    def __init__(self, minor: bool = False) -> None:
        self.minor = minor

    def __call__(self, x: float, pos: int | None = None) -> str:
        if x <= 0:
            return ""
        if not self.minor:
            return tick_text(x)
        lo, hi = sorted(abs(v) for v in self.axis.get_view_interval())
        decades = np.log10(hi / lo) if lo > 0 else np.inf
        mantissa = round(x / 10.0 ** np.floor(np.log10(x) + 1e-9), 6)
        keep = {2.0, 5.0} if decades < 2 else set()
        keep |= {3.0} if decades < 1 else set()
        return tick_text(x) if mantissa in keep else ""


def log_scale(ax: Axes, axis: str = "y") -> None:
    """A log axis with plain-number labels (`PlainLogFormatter`)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_formatter(PlainLogFormatter())
    target.set_minor_formatter(PlainLogFormatter(minor=True))


def skip(fig: Figure, what: str, reason: str) -> None:
    """Record (and log) that `what` was left out of `fig` and why."""
    fig.skipped[what] = reason
    log.info("figure %r: skipped %s: %s", fig.get_label() or "?", what, reason)


def _skipped_line(skipped: dict[str, str]) -> str:
    """ "not shown: no_qk_norm (no finite gradient L2 norm points)": what was left out, in words;
    several left out for one reason share it ("a, b (no sample)")."""
    by_reason: dict[str, list[str]] = {}
    for k, v in skipped.items():
        by_reason.setdefault(S.plain(S.humanize(v)), []).append(
            S.plain(S.humanize(k) if S.KEY_PATTERN.fullmatch(k) else k))
    return "not shown: " + "; ".join(f"{', '.join(what)} ({why})" for why, what in by_reason.items())


def finish(fig: Figure, title: str) -> Figure:
    """Set the figure's one title (over all its panels), wrapped to its width, and say under it
    what was skipped. `title` is plain words: callers pass human names, never raw keys."""
    lines = title.split("\n")
    if fig.skipped:
        lines.append(_skipped_line(fig.skipped))
    chars = S.TITLE_CHARS[getattr(fig, "width_name", "double")]
    text = "\n".join(textwrap.fill(line, chars) for line in lines if line)
    fig.suptitle(text)
    # a title past TITLE_LINES makes the figure taller instead of squeezing the panels under it
    extra = text.count("\n") + 1 - S.TITLE_LINES
    if extra > 0:
        fig.set_figheight(fig.get_figheight() + extra * S.TITLE_LINE_IN)
    return fig


def no_signal(values) -> str | None:
    """Why `values` hold nothing to draw ("no finite value", "every value is 0"), or None.

    A panel of only zeros (no spike in any run, say) is an empty figure that looks like a result;
    callers drop it and say so instead.
    """
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if not x.size:
        return "no finite value"
    if not np.any(x):
        return "every value is 0"
    return None


def no_data(ax: Axes, text: str) -> None:
    """Mark an empty panel (its axes stay labelled)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.4")


def runs_of(data) -> pd.DataFrame:
    """The runs frame of a GridData, or a frame given directly (typed to the contract)."""
    if isinstance(data, F.GridData):
        return data.runs
    if isinstance(data, pd.DataFrame):
        return F.typed_runs(data)
    raise TypeError(f"need a GridData or a runs DataFrame, got {type(data).__name__}")


def arm_order(runs: pd.DataFrame, baseline: str | None) -> list[str]:
    """Baseline first, then arms in order of first appearance (as `GridData.arms`)."""
    seen = list(dict.fromkeys(runs[F.ARM].dropna().tolist()))
    if baseline in seen:
        seen.remove(baseline)
        seen.insert(0, baseline)
    return seen


def arm_title(arm: str, baseline: str | None) -> str:
    """The arm's name as given (shown literally), "(baseline)" after the baseline's."""
    return f"{S.plain(arm)} (baseline)" if arm == baseline else S.plain(arm)


def colors_of(arms: list[str], baseline: str | None, colors: dict[str, str] | None) -> dict[str, str]:
    """`colors` (a report's one mapping) when given, with any arm it lacks added after; else
    `style.arm_colors(arms, baseline)`."""
    if colors is None:
        return S.arm_colors(arms, baseline)
    missing = [a for a in arms if a not in colors]
    extra = S.arm_colors([baseline, *colors, *missing] if baseline else [*colors, *missing], baseline)
    return {**{a: extra[a] for a in missing}, **colors}


def lr_title(lr: float | None) -> str:
    """", lr = 0.01" for a title (nothing without one LR to name)."""
    return f", lr = {lr:g}" if lr is not None else ""


def lr_values(runs: pd.DataFrame) -> list[float]:
    return sorted(float(x) for x in runs[F.LR].dropna().unique())


def filter_lr(runs: pd.DataFrame, lr: float | None) -> pd.DataFrame:
    """Runs at learning rate `lr` (relative tolerance 1e-6); all runs when `lr` is None."""
    if lr is None:
        return runs
    keep = np.isclose(runs[F.LR].to_numpy(dtype=float, na_value=np.nan), lr, rtol=1e-6, atol=0.0)
    if not keep.any():
        raise MissingData(f"no runs at lr={lr:g} (have {', '.join(f'{x:g}' for x in lr_values(runs))})")
    return runs[keep]


def reference_lr(runs: pd.DataFrame, baseline: str | None, lr: float | None = None) -> float | None:
    """The one learning rate a per-layer or per-arm summary figure shows when the grid has several.

    `lr` when given; None when the runs have at most one LR (no filtering needed); otherwise the
    LR with the lowest mean final eval loss over the baseline's non-diverged runs (over all arms
    when there is no baseline), falling back to the LR with the most runs.
    """
    if lr is not None:
        return float(lr)
    lrs = lr_values(runs)
    if len(lrs) <= 1:
        return None
    pool = runs[runs[F.ARM] == baseline] if baseline in set(runs[F.ARM]) else runs
    ok = pool[(pool[F.STATUS] != "diverged") & np.isfinite(pool[F.FINAL_EVAL_LOSS].astype(float))]
    if len(ok):
        chosen = float(ok.groupby(F.LR)[F.FINAL_EVAL_LOSS].mean().idxmin())
    else:
        chosen = float(runs.groupby(F.LR).size().idxmax())
    log.info("several learning rates (%s): per-arm figures show lr=%g (lowest baseline eval loss)",
             ", ".join(f"{x:g}" for x in lrs), chosen)
    return chosen


def per_run_series(grid: F.GridData, metric: str, run_ids=None) -> dict[str, pd.Series]:
    """{run_id: values indexed by step} for one metric; non-finite values become NaN, a step
    logged twice (a resumed run) keeps its last value."""
    frame = grid.metric(metric)
    if run_ids is not None:
        frame = frame[frame[F.RUN_ID].isin(set(run_ids))]
    out = {}
    for rid, g in frame.groupby(F.RUN_ID, sort=False):
        g = g.drop_duplicates("step", keep="last")
        vals = pd.to_numeric(g["value"], errors="coerce").to_numpy(dtype=float, copy=True)
        vals[~np.isfinite(vals)] = np.nan
        out[rid] = pd.Series(vals, index=g["step"].to_numpy(dtype=np.int64), name=rid)
    return out


def value_at(series: pd.Series, step: int) -> float:
    """The last finite value at or before `step` (NaN when there is none)."""
    s = series.loc[:step].dropna()
    return float(s.iloc[-1]) if len(s) else float("nan")


EMA_MIN_SPAN, EMA_MAX_SPAN, EMA_FRACTION = 5, 250, 20


def ema_span(n_points: int) -> int:
    """The default EMA span: a twentieth of the logged points, between 5 and 250."""
    return int(min(max(n_points // EMA_FRACTION, EMA_MIN_SPAN), EMA_MAX_SPAN))


def ema(series: pd.Series, span: int) -> pd.Series:
    """Exponential moving average over the finite points, span `span` (alpha = 2 / (span + 1)),
    debiased (pandas `adjust=True`) so the first points are not pulled toward 0; span <= 1
    returns `series` unchanged, NaN points stay NaN."""
    if span is None or span <= 1:
        return series
    finite = series.dropna()
    return finite.ewm(span=float(span), adjust=True).mean().reindex(series.index)


def seed_band(columns: list[pd.Series], band: str | None) -> tuple[np.ndarray, ...]:
    """(steps, mean, low, high) over runs aligned on step: NaN-skipping mean, and a min-max band
    (`band="minmax"`), mean +- sd (`"sd"`, ddof 1) or none (low = high = mean)."""
    table = pd.concat(columns, axis=1).sort_index()
    mean = table.mean(axis=1, skipna=True)
    if band == "minmax":
        lo, hi = table.min(axis=1), table.max(axis=1)
    elif band == "sd":
        sd = table.std(axis=1, ddof=1).fillna(0.0)
        lo, hi = mean - sd, mean + sd
    elif band is None:
        lo = hi = mean
    else:
        raise ValueError(f"band must be 'minmax', 'sd' or None, got {band!r}")
    keep = mean.notna().to_numpy()
    steps = table.index.to_numpy()[keep]
    return steps, mean.to_numpy()[keep], lo.to_numpy()[keep], hi.to_numpy()[keep]


def spike_events(grid: F.GridData, run_ids, series: str | tuple[str, ...] | None = None) -> pd.DataFrame:
    """Spike events of these runs; `series` keeps only events of that metric (or those metrics):
    "grad/norm" matches "grad/norm@olmo2" and "grad/norm@olmo_core"; None keeps all."""
    ev = grid.spikes
    if ev is None or not len(ev):
        return pd.DataFrame(columns=list(F.SPIKE_COLUMNS))
    ev = ev[ev[F.RUN_ID].isin(set(run_ids))]
    if series is not None:
        wanted = {series} if isinstance(series, str) else set(series)
        ev = ev[ev["series"].astype(str).str.split("@").str[0].isin(wanted)]
    return ev


def lr_tag(lr) -> str:
    return "nan" if lr is None or pd.isna(lr) else f"{float(lr):g}"
