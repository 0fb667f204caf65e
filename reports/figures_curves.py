"""Figures over training steps: loss, grad norm, log Z, embedding norm, attention logits (per arm
and per layer), the AdamW eps study (loss, grad norm, update RMS, eps-regime share) and the
per-layer grad-norm heatmap.

Curves are per arm, one colour per arm (`style.arm_colors`): the seed mean of each run's EMA
(span `smooth`, by default `ema_span` of the logged points) over a band over seeds, with the raw
seed mean faint beneath, so the noise and the spikes stay visible under the trend. Several learning
rates make one panel per LR (shared axes). Markers sit on the series they mark: a spike or a
divergence of an arm's runs is drawn on that arm's raw seed-mean line, at that line's value at
the step, and only events of the plotted metric are marked (grad-norm spikes on the grad-norm
figure, loss spikes on the loss figure). Artist gids, for callers and tests:

- `mean|arm|lr`, `band|arm|lr`, `raw|arm|lr`: the smoothed seed mean, its band, the raw seed mean
  (absent when unsmoothed: then `mean` is the raw mean);
- `spikes|arm|lr`, `diverged|arm|lr`: markers on the raw seed mean (`mean` when unsmoothed);
  `rewound|arm|lr`: spikes training rewound from (`train.on_spike = "rewind"`), at the spike's own
  value (the seed mean of the events' values): the logged series holds the re-run steps;
- `layer|arm|i`: per-layer curves; `heatmap`, `spike_ticks`, `spike_leading`, `diverged`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reports import frames as F
from reports import style as S
from reports.figures_common import (
    MissingData,
    arm_title,
    colors_of,
    ema,
    ema_span,
    figure_legend,
    filter_lr,
    finish,
    log_scale,
    lr_tag,
    lr_title,
    lr_values,
    new_figure,
    no_data,
    no_signal,
    outer_labels,
    panel_figure,
    per_run_series,
    reference_lr,
    seed_band,
    skip,
    spike_events,
    value_at,
)
from stability import metric_names as M

# The spike-event series a figure of a metric marks (both loss series mark loss events).
LOSS_SERIES = (M.TRAIN_LOSS, M.TRAIN_CE_LOSS)
OWN_SPIKES: dict[str, tuple[str, ...]] = {M.TRAIN_LOSS: LOSS_SERIES, M.TRAIN_CE_LOSS: LOSS_SERIES,
                                          M.GRAD_NORM: (M.GRAD_NORM,)}
BAND_TEXT = {"minmax": "band: seed min-max", "sd": "band: mean ± sd over seeds"}
SPARSE_POINTS = 40  # a curve of this few points (probes every 50 steps) shows its points
Series = dict[str, pd.Series]


@dataclass
class _Drawn:
    """What a panel drew beyond the arm lines, for the legend's proxies."""

    raw: bool = False
    spike: bool = False
    rewound: bool = False
    diverged: bool = False

    def __ior__(self, other: _Drawn) -> _Drawn:
        self.raw |= other.raw
        self.spike |= other.spike
        self.rewound |= other.rewound
        self.diverged |= other.diverged
        return self


@dataclass
class CurveStyle:
    """How a curve figure smooths, bands and marks its series."""

    span: int = 1  # EMA span in logged points; <= 1: raw
    band: str | None = "minmax"
    spike_series: tuple[str, ...] | None = None  # events marked; None: no markers
    mark_diverged: bool = True


def _markers(ax: Axes, points: list[tuple[int, float]], color: str, gid: str, *, diverged: bool,
             marker: str = S.SPIKE_MARKER) -> bool:
    """Plot `points` (finite ones) as spike (`marker`) or divergence markers; whether any was drawn."""
    pts = sorted({p for p in points if np.isfinite(p[1])})
    if not pts:
        return False
    kw = (dict(marker=S.DIVERGED_MARKER, markersize=6, markeredgewidth=1.6, color=color, zorder=6)
          if diverged else dict(marker=marker, markersize=5, color=color,
                                markeredgecolor=S.MARKER_EDGE, markeredgewidth=0.5, zorder=5))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", gid=gid, label="_marks", **kw)
    return True


def _draw_arm(ax: Axes, grid: F.GridData, group: pd.DataFrame, data: Series, *, gid: str, color: str,
              label: str, style: CurveStyle) -> _Drawn:
    """One arm at one LR on `ax`: raw seed mean (faint), EMA seed mean and band, markers."""
    ids = list(group[F.RUN_ID])
    drawn = _Drawn()
    steps, raw, _, _ = seed_band([data[r] for r in ids], None)
    raw_mean = pd.Series(raw, index=steps)
    smoothed = style.span > 1
    if smoothed:
        ax.plot(steps, raw, color=color, alpha=S.RAW_ALPHA, linewidth=0.6, zorder=2, gid=f"raw|{gid}",
                label="_raw")
        drawn.raw = True
    steps, mean, lo, hi = seed_band([ema(data[r], style.span) for r in ids], style.band)
    sparse = dict(marker="o", markersize=2.5) if len(steps) <= SPARSE_POINTS else {}
    ax.plot(steps, mean, color=color, label=label, zorder=4, gid=f"mean|{gid}", **sparse)
    if style.band is not None and len(ids) > 1:
        ax.fill_between(steps, lo, hi, color=color, alpha=S.BAND_ALPHA, linewidth=0, zorder=1,
                        gid=f"band|{gid}")
    if style.spike_series is not None:
        ev = spike_events(grid, ids, style.spike_series)
        rewound = F.rewound(ev)
        pts = [(int(s), value_at(raw_mean, int(s))) for s in ev.loc[~rewound, "step"]]
        drawn.spike = _markers(ax, pts, color, f"spikes|{gid}", diverged=False)
        # the logged series holds the re-run steps: mark the spike at its own value (seed mean)
        back = ev[rewound].assign(value=lambda e: pd.to_numeric(e["value"], errors="coerce"))
        pts = [(int(s), float(v)) for s, v in back.groupby("step")["value"].mean().items()]
        drawn.rewound = _markers(ax, pts, color, f"rewound|{gid}", diverged=False, marker=S.REWIND_MARKER)
    if style.mark_diverged:
        div = group[(group[F.STATUS] == "diverged") & group[F.DIVERGED_AT_STEP].notna()]
        pts = [(int(d), value_at(raw_mean, int(d))) for d in div[F.DIVERGED_AT_STEP]]
        drawn.diverged = _markers(ax, pts, color, f"diverged|{gid}", diverged=True)
    return drawn


def _spike_word(series: tuple[str, ...] | None) -> str:
    """"loss spike", "grad-norm spike": what a spike marker marks, for the legend."""
    if series == LOSS_SERIES:
        return "loss spike"
    if series == (M.GRAD_NORM,):
        return "grad-norm spike"
    return "spike"


def _proxies(drawn: _Drawn, spike_label: str) -> list[Line2D]:
    """Legend entries for the faint raw line, spike and divergence markers (in grey: every arm
    draws them in its own colour)."""
    out = []
    if drawn.raw:
        out.append(Line2D([], [], color="0.45", alpha=0.6, linewidth=0.6, label="raw seed mean"))
    if drawn.spike:
        out.append(Line2D([], [], marker=S.SPIKE_MARKER, linestyle="none", color="0.6",
                          markeredgecolor=S.MARKER_EDGE, markeredgewidth=0.5, label=spike_label))
    if drawn.rewound:
        out.append(Line2D([], [], marker=S.REWIND_MARKER, linestyle="none", color="0.6",
                          markeredgecolor=S.MARKER_EDGE, markeredgewidth=0.5,
                          label=f"{spike_label}, rewound from (its value)"))
    if drawn.diverged:
        out.append(Line2D([], [], marker=S.DIVERGED_MARKER, linestyle="none", color="0.3",
                          markeredgewidth=1.6, label="diverged"))
    return out


def _arm_handles(grid: F.GridData, colors: dict[str, str], seeds: dict[str, int]) -> list[Line2D]:
    """One legend entry per drawn arm, in the grid's order: "olmo2 (baseline), n=3"."""
    return [Line2D([], [], color=colors[a], label=f"{arm_title(a, grid.baseline)}, n={seeds[a]}")
            for a in grid.arms if a in seeds]


def _smoothing_text(style: CurveStyle) -> str:
    bits = [f"seed mean of per-run EMAs (span {style.span} points)" if style.span > 1 else "seed mean",
            BAND_TEXT.get(style.band or "", "")]
    return ", ".join(b for b in bits if b)


def _auto_span(data: Series, smooth: int | None) -> int:
    """`smooth` when given, else `ema_span` of the longest run's logged points; 1 (raw) for a
    sparse series (a probe every few steps: an EMA over it would only lag)."""
    if smooth is not None:
        return int(smooth)
    n = max((int(s.notna().sum()) for s in data.values()), default=0)
    return 1 if n <= SPARSE_POINTS else ema_span(n)


def _check_signal(data: Series, what: str, grid: F.GridData) -> Series:
    """The runs of `data` with a finite point; `MissingData` when none has a finite non-zero one."""
    data = {rid: x for rid, x in data.items() if x.notna().any()}
    if not data:
        raise MissingData(f"no finite {what} point in grid {grid.name!r}")
    if (reason := no_signal(np.concatenate([x.to_numpy() for x in data.values()]))) is not None:
        raise MissingData(f"{what}: {reason} in grid {grid.name!r}")
    return data


def _draw_panel(ax: Axes, grid: F.GridData, runs: pd.DataFrame, data: Series, colors: dict[str, str],
                style: CurveStyle) -> tuple[_Drawn, dict[str, int]]:
    """Every arm of `runs` (one LR) on `ax`; (what was drawn, runs per drawn arm)."""
    drawn, seeds = _Drawn(), {}
    for arm in grid.arms:
        group = runs[(runs[F.ARM] == arm) & runs[F.RUN_ID].isin(data.keys())]
        if not len(group):
            continue
        gid = f"{arm}|{lr_tag(group[F.LR].iloc[0])}"
        drawn |= _draw_arm(ax, grid, group, data, gid=gid, color=colors[arm], label=S.plain(arm), style=style)
        seeds[arm] = len(group)
    return drawn, seeds


def _merge_seeds(total: dict[str, int], more: dict[str, int]) -> None:
    for arm, n in more.items():
        total[arm] = max(total.get(arm, 0), n)


def curves_figure(grid: F.GridData, data: Series, *, key: str, name: str, title: str, style: CurveStyle,
                  logy: bool = False, lr: float | None = None, ylabel: str | None = None,
                  width: str = "double", colors: dict[str, str] | None = None) -> Figure:
    """Per-arm curves of per-run series `data` ({run_id: values by step}), one panel per learning
    rate (one panel with `lr` or a single LR). `key` names the metric (label, messages)."""
    runs = filter_lr(grid.runs, lr)
    data = _check_signal({r: x for r, x in data.items() if r in set(runs[F.RUN_ID])}, key, grid)
    runs = runs[runs[F.RUN_ID].isin(data.keys())]
    lrs = lr_values(runs) or [None]
    fig, panels = panel_figure(name, len(lrs), width=width, sharex=True, sharey=True)
    for arm in grid.arms:
        if arm not in set(runs[F.ARM]):
            skip(fig, arm, f"no finite {key} points")
    colors = colors_of(grid.arms, grid.baseline, colors)
    drawn, seeds = _Drawn(), {}
    for ax, lr_val in zip(panels, lrs):
        at = runs if lr_val is None else filter_lr(runs, lr_val)
        d, n = _draw_panel(ax, grid, at, data, colors, style)
        drawn |= d
        _merge_seeds(seeds, n)
        if len(lrs) > 1:
            ax.set_title(f"lr = {lr_val:g}")
        if logy:
            log_scale(ax)
    outer_labels(panels, S.STEP_LABEL, ylabel or S.axis_label(key))
    figure_legend(fig, _arm_handles(grid, colors, seeds) + _proxies(drawn, _spike_word(style.spike_series)))
    return finish(fig, f"{S.plain(grid.name)}: {title}{lr_title(lr)}\n{_smoothing_text(style)}")


@S.styled
def metric_curves(grid: F.GridData, metric: str, *, smooth: int | None = None, band: str | None = "minmax",
                  logy: bool = False, lr: float | None = None, mark_spikes: bool = True,
                  ylabel: str | None = None, name: str | None = None, title: str | None = None,
                  width: str = "double", colors: dict[str, str] | None = None) -> Figure:
    """Seed mean (EMA, band, raw faint) of one series per arm, one panel per LR, markers on it.

    `smooth`: EMA span in logged points (None: `ema_span`, raw for a series of at most
    `SPARSE_POINTS` points; 1: raw only). `band`: "minmax" over
    seeds, "sd" (mean ± sd) or None. `lr`: only runs at that LR. `mark_spikes`: mark the spike
    events of this metric (`OWN_SPIKES`: both loss series share the loss events), never another
    series' events. An arm without finite points is skipped (`fig.skipped`); when no run has a
    finite non-zero point there is no figure (`MissingData`).
    """
    if band not in (None, *BAND_TEXT):
        raise ValueError(f"band must be 'minmax', 'sd' or None, got {band!r}")
    data = per_run_series(grid, metric, filter_lr(grid.runs, lr)[F.RUN_ID])
    own = OWN_SPIKES.get(metric, (metric,))
    style = CurveStyle(span=_auto_span(data, smooth), band=band, spike_series=own if mark_spikes else None)
    return curves_figure(grid, data, key=metric, name=name or metric.replace("/", "_") + "_curves",
                         title=title or f"{S.lower_first(S.metric_name(metric))} per arm", style=style,
                         logy=logy, lr=lr, ylabel=ylabel, width=width, colors=colors)


def loss_metric(grid: F.GridData) -> str:
    """The training loss to compare arms on: the cross-entropy when logged (train/loss adds the
    scaled z-loss, which differs between z-loss arms), else train/loss."""
    s = grid.series
    has_ce = len(s) and (s["metric"] == M.TRAIN_CE_LOSS).any()
    return M.TRAIN_CE_LOSS if has_ce else M.TRAIN_LOSS


def loss_curves(grid: F.GridData, metric: str | None = None, smooth: int | None = None, *,
                band: str | None = "minmax", logy: bool = False, lr: float | None = None,
                width: str = "double", colors: dict[str, str] | None = None) -> Figure:
    """Training loss per arm over steps (`loss_metric` by default), loss spikes and divergences
    marked on each arm's raw seed mean."""
    metric = metric or loss_metric(grid)
    return metric_curves(grid, metric, smooth=smooth, band=band, logy=logy, lr=lr, width=width,
                         colors=colors, name="loss_curves", title="training loss per arm")


def grad_norm_curves(grid: F.GridData, smooth: int | None = None, *, band: str | None = "minmax",
                     logy: bool = True, lr: float | None = None, width: str = "double",
                     colors: dict[str, str] | None = None) -> Figure:
    """Global gradient L2 norm (before clipping) per arm, log axis, grad-norm spikes marked; e.g.
    with and without n-gram masking."""
    return metric_curves(grid, M.GRAD_NORM, smooth=smooth, band=band, logy=logy, lr=lr, width=width,
                         colors=colors, name="grad_norm_curves")


def log_z_curves(grid: F.GridData, smooth: int | None = None, *, band: str | None = "minmax",
                 lr: float | None = None, width: str = "double",
                 colors: dict[str, str] | None = None) -> Figure:
    """Mean log Z of the output logits per arm: its drift with and without z-loss (which pulls it
    toward 0)."""
    return metric_curves(grid, M.LOGITS_LOG_Z_MEAN, smooth=smooth, band=band, lr=lr, mark_spikes=False,
                         width=width, colors=colors, name="log_z_curves", title="mean log Z drift per arm")


def embedding_norm_curves(grid: F.GridData, smooth: int | None = None, *, band: str | None = "minmax",
                          lr: float | None = None, width: str = "double",
                          colors: dict[str, str] | None = None) -> Figure:
    """L2 norm of the embedding matrix per arm: with and without embedding weight decay."""
    return metric_curves(grid, M.PARAM_NORM_EMBED, smooth=smooth, band=band, lr=lr, mark_spikes=False,
                         width=width, colors=colors, name="embedding_norm_curves")


# ------------------------------------------------------------------------------ per-layer data

def _over_layers(frame: pd.DataFrame, how: str) -> Series:
    """{run_id: per-step `how` ("max" or "mean") over layers} of a `frames.layer_frame`."""
    out = {}
    for rid, g in frame.groupby(F.RUN_ID, sort=False):
        s = g.groupby("step")["value"].agg(how)
        out[rid] = pd.Series(s.to_numpy(dtype=float), index=s.index.to_numpy(dtype=np.int64), name=rid)
    return out


def _with_signal(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """(`frame` without its NaN rows, None), or (an empty frame, why) when nothing in it is worth
    a panel: no finite value, or only zeros."""
    reason = no_signal(frame["value"]) if len(frame) else "no data"
    if reason is not None:
        return frame.iloc[0:0], reason
    return frame[frame["value"].notna()], None


@S.styled
def attn_logit_curves(grid: F.GridData, *, lr: float | None = None, logy: bool = True, smooth: int = 1,
                      width: str = "double", colors: dict[str, str] | None = None) -> Figure:
    """Max attention logit (max over layers and heads) per arm over steps, log axis: QK-norm
    keeps it flat, without it it grows by orders of magnitude (Wortsman et al.).

    From the dense key attn/logit_max, else the attn/logit_max/layer_i series. Attention is probed
    every few steps, so `smooth` defaults to 1 (raw). Several LRs: one panel per LR.
    """
    runs = filter_lr(grid.runs, lr)
    frame, reason = _with_signal(F.layer_frame(grid, M.ATTN_LOGIT_MAX, runs[F.RUN_ID]))
    if reason is not None:
        raise MissingData(f"{M.ATTN_LOGIT_MAX} (dense or per-layer series): {reason} in grid {grid.name!r}")
    style = CurveStyle(span=smooth, spike_series=None)
    return curves_figure(grid, _over_layers(frame, "max"), key=M.ATTN_LOGIT_MAX, name="attn_logit_curves",
                         title="max attention logit (max over layers) per arm", style=style, logy=logy,
                         lr=lr, width=width, colors=colors)


def _layer_panels(panels: list[Axes], grid: F.GridData, frame: pd.DataFrame, arms: list[str],
                  runs: pd.DataFrame) -> int:
    """One panel per arm with the seed mean of every layer (colour by layer); returns n_layers."""
    layers = sorted(frame["layer"].unique()) if len(frame) else []
    colors = dict(zip(layers, S.layer_colors(len(layers))))
    for ax, arm in zip(panels, arms):
        ids = set(runs.loc[runs[F.ARM] == arm, F.RUN_ID])
        sub = frame[frame[F.RUN_ID].isin(ids)]
        if not len(sub):
            no_data(ax, "no data")
        mean = sub.groupby(["layer", "step"])["value"].mean()
        for layer in layers:
            if layer in mean.index.get_level_values(0):
                m = mean.loc[layer]
                ax.plot(m.index.to_numpy(), m.to_numpy(), color=colors[layer], gid=f"layer|{arm}|{layer}",
                        label=f"layer {layer}")
        ax.set_title(arm_title(arm, grid.baseline) + f", n={sub[F.RUN_ID].nunique()}")
    return len(layers)


def _layer_key(fig: Figure, panels: list[Axes], n_layers: int) -> None:
    """The figure's layer legend for up to 8 layers, a colour bar for more."""
    if n_layers == 0:
        return
    if n_layers <= 8:
        colors = S.layer_colors(n_layers)
        figure_legend(fig, [Line2D([], [], color=c, label=f"layer {i}") for i, c in enumerate(colors)])
    else:
        sm = ScalarMappable(norm=Normalize(0, n_layers - 1), cmap=S.LAYER_CMAP)
        fig.colorbar(sm, ax=panels, label=S.LAYER_LABEL, location="bottom", shrink=0.6, aspect=40)


def _arms_with(grid: F.GridData, frames: list[pd.DataFrame],
               runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(arms with rows in any of `frames`, arms without)."""
    have = set().union(*(set(f[F.RUN_ID]) for f in frames))
    arms = [a for a in grid.arms if set(runs.loc[runs[F.ARM] == a, F.RUN_ID]) & have]
    return arms, [a for a in grid.arms if a not in arms]


@S.styled
def attn_logit_layers(grid: F.GridData, *, lr: float | None = None, logy: bool = True,
                      width: str = "double") -> Figure:
    """Max attention logit per layer over steps: a panel per arm (wrapped into rows, shared log
    axis), seed mean, colour by layer, one layer legend. Several LRs: one (`reference_lr`)."""
    lr = reference_lr(grid.runs, grid.baseline, lr)
    runs = filter_lr(grid.runs, lr)
    frame, reason = _with_signal(F.layer_frame(grid, M.ATTN_LOGIT_MAX, runs[F.RUN_ID]))
    if reason is not None:
        raise MissingData(f"{M.ATTN_LOGIT_MAX} (dense or per-layer series): {reason} in grid {grid.name!r}")
    arms, missing = _arms_with(grid, [frame], runs)
    fig, panels = panel_figure("attn_logit_layers", len(arms), width=width, sharex=True, sharey=True)
    for arm in missing:
        skip(fig, arm, f"no {M.ATTN_LOGIT_MAX} data")
    n_layers = _layer_panels(panels, grid, frame, arms, runs)
    for ax in panels:
        if logy:
            log_scale(ax)
    outer_labels(panels, S.STEP_LABEL, S.axis_label(M.ATTN_LOGIT_MAX))
    _layer_key(fig, panels, n_layers)
    return finish(fig, f"{S.plain(grid.name)}: max attention logit per layer, seed mean{lr_title(lr)}")


# --------------------------------------------------------------------------- the AdamW eps study

def _eps_panels(grid: F.GridData, runs: pd.DataFrame) -> tuple[list[tuple[str, Series, CurveStyle, bool]],
                                                                dict[str, str]]:
    """(key, per-run series, style, log axis) of the eps figure's panels with data, and the
    reasons of those without: loss, grad norm, update RMS and eps share (means over layers)."""
    ids = runs[F.RUN_ID]
    loss = loss_metric(grid)
    panels, dropped = [], {}
    for key, how, logy in ((loss, None, False), (M.GRAD_NORM, None, True),
                           (M.UPDATE_RMS, "mean", True), (M.OPTIM_EPS_REGIME, "mean", False)):
        if how is None:
            data = per_run_series(grid, key, ids)
            reason = no_signal(np.concatenate([x.to_numpy() for x in data.values()])) if data else "no data"
            style = CurveStyle(span=_auto_span(data, None), spike_series=OWN_SPIKES.get(key))
        else:
            frame, reason = _with_signal(F.layer_frame(grid, key, ids, heads="none"))
            data, style = _over_layers(frame, how), CurveStyle(span=1, spike_series=None)
        if reason is None:
            panels.append((key, data, style, logy))
        else:
            dropped[key] = reason
    return panels, dropped


@S.styled
def update_rms_and_eps(grid: F.GridData, *, lr: float | None = None, width: str = "double",
                       colors: dict[str, str] | None = None) -> Figure:
    """The AdamW eps study (eps 1e-5 vs 1e-8 in OLMo 2): training loss, gradient L2 norm, Adam
    update RMS and the share of entries in the eps regime (sqrt(v_hat) < eps), the last two
    averaged over layers; a panel each, one colour per arm, shared step axis.

    A panel whose data is missing or all 0 is left out (named under the title); without update
    RMS and eps share there is no figure. Several LRs: one (`reference_lr`).
    """
    lr = reference_lr(grid.runs, grid.baseline, lr)
    runs = filter_lr(grid.runs, lr)
    panels, dropped = _eps_panels(grid, runs)
    optimizer = {M.UPDATE_RMS, M.OPTIM_EPS_REGIME}
    if not optimizer & {key for key, *_ in panels}:
        raise MissingData("; ".join(f"{k}: {dropped[k]}" for k in (M.UPDATE_RMS, M.OPTIM_EPS_REGIME))
                          + f" in grid {grid.name!r}")
    fig, axes = panel_figure("update_rms_and_eps", len(panels), width=width, sharex=True)
    for key, reason in dropped.items():
        skip(fig, key, reason)
    colors = colors_of(grid.arms, grid.baseline, colors)
    drawn, seeds = _Drawn(), {}
    for ax, (key, data, style, logy) in zip(axes, panels):
        d, n = _draw_panel(ax, grid, runs, data, colors, style)
        drawn |= d
        _merge_seeds(seeds, n)
        if logy:
            log_scale(ax)
        ax.set_ylabel(S.axis_label(key) + (", layer mean" if key in optimizer else ""))
        ax.set_title(S.metric_name(key))
    outer_labels(axes, S.STEP_LABEL)
    figure_legend(fig, _arm_handles(grid, colors, seeds) + _proxies(drawn, "spike (of that panel's series)"))
    return finish(fig, f"{S.plain(grid.name)}: AdamW eps study{lr_title(lr)}\nseed means; update RMS "
                       f"and eps-regime share: mean over layers; the others: EMA, raw seed mean faint")


# ------------------------------------------------------------------------------------ heatmap

def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half way between neighbours)."""
    x = np.asarray(x, dtype=float)
    if x.size == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def _run_caption(grid: F.GridData, run_id: str) -> str:
    """"no_qk_norm, seed 0, lr = 0.03": a run by its arm, seed and LR (run ids mean nothing)."""
    row = grid.runs[grid.runs[F.RUN_ID] == run_id]
    if not len(row):
        return S.plain(run_id)
    r = row.iloc[0]
    bits = [arm_title(r[F.ARM], grid.baseline)]
    if pd.notna(r[F.SEED]):
        bits.append(f"seed {int(r[F.SEED])}")
    if pd.notna(r[F.LR]):
        bits.append(f"lr = {float(r[F.LR]):g}")
    return ", ".join(bits)


def _heatmap_marks(ax: Axes, grid: F.GridData, run_id: str, layers: np.ndarray) -> list[Line2D]:
    """Spike ticks above the top edge, circles on their leading layer, an x at a divergence;
    returns their legend proxies."""
    top = ax.get_xaxis_transform()
    proxies = []
    ev = spike_events(grid, [run_id])
    if len(ev):
        xs = ev["step"].to_numpy(dtype=float)
        ax.plot(xs, np.full(xs.size, 1.0), transform=top, linestyle="none", marker=3, markersize=6,
                markeredgewidth=1.5, color=S.SPIKE_COLOR, clip_on=False, gid="spike_ticks")
        proxies.append(Line2D([], [], marker=3, linestyle="none", markersize=6, markeredgewidth=1.5,
                              color=S.SPIKE_COLOR, label="spike (any series)"))
        pos = {lay: i for i, lay in enumerate(layers)}
        lead = [(x, pos[int(lay)]) for x, lay in zip(xs, ev["leading_layer"])
                if pd.notna(lay) and int(lay) in pos]
        if lead:
            ax.plot([p[0] for p in lead], [p[1] for p in lead], linestyle="none", marker="o", mfc="none",
                    mec=S.SPIKE_COLOR, markeredgewidth=1.2, markersize=6, gid="spike_leading")
            proxies.append(Line2D([], [], marker="o", linestyle="none", mfc="none", mec=S.SPIKE_COLOR,
                                  markeredgewidth=1.2, label="its leading layer"))
    row = grid.runs[grid.runs[F.RUN_ID] == run_id]
    if len(row) and row[F.STATUS].iloc[0] == "diverged" and pd.notna(row[F.DIVERGED_AT_STEP].iloc[0]):
        ax.plot([float(row[F.DIVERGED_AT_STEP].iloc[0])], [1.0], transform=top, marker=S.DIVERGED_MARKER,
                color="k", markeredgewidth=1.6, clip_on=False, linestyle="none", gid="diverged")
        proxies.append(Line2D([], [], marker=S.DIVERGED_MARKER, linestyle="none", color="k",
                              markeredgewidth=1.6, label="diverged"))
    return proxies


@S.styled
def layer_grad_heatmap(grid: F.GridData, run_id: str, key: str = M.GRAD_NORM, *,
                       width: str = "double") -> Figure:
    """Per-layer gradient norm of one run (dense `key`, head -1) as a layer x step heatmap, log
    colour scale (cividis: colour-blind safe).

    Spike events are ticks above the top edge (and an open circle on their leading layer), a
    divergence an x above the top edge. The QuadMesh (gid "heatmap") holds the (n_layers,
    n_steps) array, masked where a value is missing, non-finite or <= 0.
    """
    d = grid.dense
    d = d[(d[F.RUN_ID] == run_id) & (d["key"] == key) & (d["head"] == -1) & (d["layer"] >= 0)]
    if not len(d):
        raise MissingData(f"no dense {key} rows (head -1) for run {run_id!r}")
    d = d.drop_duplicates(["step", "layer"], keep="last")
    table = d.pivot(index="layer", columns="step", values="value").sort_index().sort_index(axis=1)
    z = table.to_numpy(dtype=float)
    z = np.ma.masked_where(~np.isfinite(z) | (z <= 0), z)
    steps = table.columns.to_numpy(dtype=float)
    layers = table.index.to_numpy()
    fig, axes = new_figure(f"layer_grad_heatmap_{run_id}", width=width, height=1.7 + 0.2 * len(layers))
    ax = axes[0, 0]
    ax.grid(False)
    if z.count():
        vmin, vmax = float(z.min()), float(z.max())
        if vmax <= vmin:
            vmin, vmax = vmin / 1.1, vmax * 1.1
        norm = LogNorm(vmin=vmin, vmax=vmax)
    else:
        norm = LogNorm(vmin=1e-3, vmax=1.0)
        skip(fig, "values", "no finite positive value")
    mesh = ax.pcolormesh(_edges(steps), np.arange(len(layers) + 1) - 0.5, z, norm=norm, cmap=S.HEATMAP_CMAP,
                         shading="flat", rasterized=True)
    mesh.set_gid("heatmap")
    fig.colorbar(mesh, ax=ax, label=S.axis_label(key) + ", per layer", pad=0.01, aspect=15)
    ax.set_yticks(np.arange(len(layers)), [str(x) for x in layers])
    ax.set_xlabel(S.STEP_LABEL)
    ax.set_ylabel(S.LAYER_LABEL)
    figure_legend(fig, _heatmap_marks(ax, grid, run_id, layers))
    return finish(fig, f"{_run_caption(grid, run_id)}: {S.lower_first(S.metric_name(key))} per layer")
