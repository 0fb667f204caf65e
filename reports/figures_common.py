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

from reports import frames as F

log = logging.getLogger("reports.figures")

# statuses whose per-run summaries are final (a running run's numbers are still moving)
SETTLED = ("finished", "diverged")


class MissingData(ValueError):
    """The data a figure needs is not there; the message says what is missing."""


def new_figure(name: str, nrows: int = 1, ncols: int = 1, *, width: float | None = None,
               height: float | None = None, sharex: bool | str = False,
               sharey: bool | str = False) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure labelled `name` on an Agg canvas, and its axes as a 2-D array."""
    width = width if width is not None else min(4.2 * ncols + 1.0, 18.0)
    height = height if height is not None else 3.2 * nrows + 0.6
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.set_label(name)
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    fig.skipped = {}
    return fig, axes


TITLE_WIDTH = 70  # characters per title line on a one-panel figure


def skip(fig: Figure, what: str, reason: str) -> None:
    """Record (and log) that `what` was left out of `fig` and why."""
    fig.skipped[what] = reason
    log.info("figure %r: skipped %s: %s", fig.get_label() or "?", what, reason)


def finish(fig: Figure, title: str, ax: Axes | None = None) -> Figure:
    """Set the title (of `ax` for a one-panel figure, else of the figure) and list what was
    skipped under it."""
    if fig.skipped:
        title += "\n(skipped: " + "; ".join(f"{k}: {v}" for k, v in fig.skipped.items()) + ")"
    if ax is not None:  # one panel: keep the title inside the axes' width (legends sit to the right)
        ax.set_title("\n".join(textwrap.fill(line, TITLE_WIDTH) for line in title.split("\n")))
    else:
        fig.suptitle(title)
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
    return f"{arm} (baseline)" if arm == baseline else str(arm)


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


def smooth_series(series: pd.Series, window: int) -> pd.Series:
    """Trailing mean over `window` finite points (window <= 1: unchanged); NaN points stay NaN."""
    if window is None or window <= 1:
        return series
    finite = series.dropna()
    return finite.rolling(int(window), min_periods=1).mean().reindex(series.index)


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


def spike_events(grid: F.GridData, run_ids, series: str | None = None) -> pd.DataFrame:
    """Spike events of these runs; `series` keeps only events of that metric ("grad/norm" matches
    "grad/norm@olmo2" and "grad/norm@olmo_core"); None keeps all."""
    ev = grid.spikes
    if ev is None or not len(ev):
        return pd.DataFrame(columns=list(F.SPIKE_COLUMNS))
    ev = ev[ev[F.RUN_ID].isin(set(run_ids))]
    if series is not None:
        ev = ev[ev["series"].astype(str).str.split("@").str[0] == series]
    return ev


def lr_tag(lr) -> str:
    return "nan" if lr is None or pd.isna(lr) else f"{float(lr):g}"
