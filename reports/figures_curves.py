"""Figures over training steps: loss, grad norm, log Z, embedding norm, attention logits, per-layer
grad-norm heatmap, update RMS and the AdamW eps regime.

Curves are per arm (one line per arm and learning rate): the mean over seeds with a band over
seeds. Artist gids, for callers and tests:

- `mean|arm|lr`, `band|arm|lr`: the seed mean and its band;
- `spikes|arm|lr`: one marker per spike event of that arm's runs, at (event step, that run's
  value of the plotted metric at that step);
- `diverged|arm|lr`: an x per diverged run at (diverged_at_step, the run's last finite value);
- `layer|arm|i`: per-layer curves; `heatmap`, `spike_ticks`, `spike_leading`, `diverged`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reports import frames as F
from reports import style as S
from reports.figures_common import (
    MissingData,
    arm_title,
    filter_lr,
    finish,
    lr_tag,
    lr_values,
    new_figure,
    no_data,
    no_signal,
    per_run_series,
    reference_lr,
    seed_band,
    skip,
    smooth_series,
    spike_events,
    value_at,
)
from stability import metric_names as M

# Legend proxies shared by the curve figures.
_SPIKE_PROXY = dict(marker=S.SPIKE_MARKER, linestyle="none", color="0.5", markeredgecolor="k", label="spike")
_DIVERGED_PROXY = dict(marker=S.DIVERGED_MARKER, linestyle="none", color="k", markeredgewidth=2,
                       label="diverged")


@S.styled
def metric_curves(grid: F.GridData, metric: str, *, smooth: int = 1, band: str | None = "minmax",
                  logy: bool = False, lr: float | None = None, mark_spikes: bool = True,
                  spike_series: str | None = None, ylabel: str | None = None,
                  name: str | None = None) -> Figure:
    """Seed mean (and band) of one series per arm and learning rate, spikes and divergences marked.

    `smooth`: trailing mean over that many logged points, per run before averaging (1: raw).
    `band`: "minmax" over seeds, "sd" (mean +- sd) or None. `lr`: only runs at that LR; None
    draws every LR of an arm as its own line (line style by LR). `spike_series`: mark only events
    of that metric (e.g. "train/loss"); None marks every event of the run (grad-norm spikes
    tend to precede loss spikes), at the run's raw value of `metric` at the event step.
    An arm without finite points of `metric` is skipped with its reason in `fig.skipped`; when no
    run has a finite non-zero point there is no figure (`MissingData`).
    """
    name = name or metric.replace("/", "_") + "_curves"
    runs = filter_lr(grid.runs, lr)
    data = {rid: x for rid, x in per_run_series(grid, metric, runs[F.RUN_ID]).items() if x.notna().any()}
    if not data:
        raise MissingData(f"no finite {metric} point in grid {grid.name!r}")
    if (reason := no_signal(np.concatenate([x.to_numpy() for x in data.values()]))) is not None:
        raise MissingData(f"{metric}: {reason} in grid {grid.name!r}")
    fig, axes = new_figure(name, width=7.5, height=4.4)
    ax = axes[0, 0]
    colors = S.arm_colors(grid.arms, grid.baseline)
    lrs = lr_values(runs)
    styles = S.lr_linestyles(lrs)
    multi = len(lrs) > 1
    any_spike = any_div = False
    for arm in grid.arms:
        arm_runs = runs[(runs[F.ARM] == arm) & runs[F.RUN_ID].isin(data.keys())]
        if not len(arm_runs):
            skip(fig, arm, f"no finite {metric} points")
            continue
        for lr_val, group in arm_runs.groupby(F.LR, dropna=False, sort=True):
            tag = lr_tag(lr_val)
            ids = list(group[F.RUN_ID])
            steps, mean, lo, hi = seed_band([smooth_series(data[r], smooth) for r in ids], band)
            ls = styles.get(float(lr_val), "-") if not pd.isna(lr_val) else "-"
            label = f"{arm_title(arm, grid.baseline)}" + (f", lr={tag}" if multi else "") + f" (n={len(ids)})"
            (line,) = ax.plot(steps, mean, color=colors[arm], linestyle=ls, label=label, zorder=3)
            line.set_gid(f"mean|{arm}|{tag}")
            if band is not None and len(ids) > 1:
                poly = ax.fill_between(steps, lo, hi, color=colors[arm], alpha=0.15, linewidth=0, zorder=2)
                poly.set_gid(f"band|{arm}|{tag}")
            if mark_spikes:
                ev = spike_events(grid, ids, spike_series)
                pts = sorted((int(e.step), value_at(data[e.run_id], int(e.step))) for e in ev.itertuples())
                pts = [p for p in pts if np.isfinite(p[1])]
                if pts:
                    any_spike = True
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none",
                            marker=S.SPIKE_MARKER, color=colors[arm], markeredgecolor="k",
                            markeredgewidth=0.6, zorder=5, gid=f"spikes|{arm}|{tag}", label="_spikes")
            div = group[(group[F.STATUS] == "diverged") & group[F.DIVERGED_AT_STEP].notna()]
            pts = [(int(d), value_at(data[r], int(d)))
                   for r, d in zip(div[F.RUN_ID], div[F.DIVERGED_AT_STEP])]
            pts = [p for p in pts if np.isfinite(p[1])]
            if pts:
                any_div = True
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none",
                        marker=S.DIVERGED_MARKER, markersize=8, markeredgewidth=2, color=colors[arm],
                        zorder=6, gid=f"diverged|{arm}|{tag}", label="_diverged")
    if len(fig.skipped) == len(grid.arms):
        raise MissingData(f"no arm of grid {grid.name!r} has {metric} points")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(S.STEP_LABEL)
    ax.set_ylabel(ylabel or S.axis_label(metric))
    handles, labels = ax.get_legend_handles_labels()
    if any_spike:
        handles.append(Line2D([], [], **_SPIKE_PROXY))
    if any_div:
        handles.append(Line2D([], [], **_DIVERGED_PROXY))
    fig.legend(handles=handles, loc="outside right upper", ncols=1 + len(handles) // 16)
    bits = [f"smoothed over {smooth} points" if smooth and smooth > 1 else "",
            {"minmax": "band: min-max over seeds", "sd": "band: mean +- sd"}.get(band, "")]
    sub = ", ".join(b for b in bits if b)
    return finish(fig, f"{grid.name}: {metric}, seed mean" + (f" ({sub})" if sub else ""), ax)


def loss_curves(grid: F.GridData, metric: str = M.TRAIN_LOSS, smooth: int = 1, *, band: str | None = "minmax",
                logy: bool = False, lr: float | None = None, spike_series: str | None = None) -> Figure:
    """Training loss per arm over steps: seed mean with a band, spikes and divergences marked."""
    return metric_curves(grid, metric, smooth=smooth, band=band, logy=logy, lr=lr, spike_series=spike_series,
                         name="loss_curves" if metric == M.TRAIN_LOSS else None)


def grad_norm_curves(grid: F.GridData, smooth: int = 1, *, band: str | None = "minmax", logy: bool = True,
                     lr: float | None = None, spike_series: str | None = None) -> Figure:
    """Global grad L2 norm (before clipping) per arm over steps, spikes and divergences marked."""
    return metric_curves(grid, M.GRAD_NORM, smooth=smooth, band=band, logy=logy, lr=lr,
                         spike_series=spike_series, name="grad_norm_curves")


def log_z_curves(grid: F.GridData, smooth: int = 1, *, band: str | None = "minmax",
                 lr: float | None = None) -> Figure:
    """Mean log Z of the output logits per arm over steps (z-loss drives it toward 0)."""
    return metric_curves(grid, M.LOGITS_LOG_Z_MEAN, smooth=smooth, band=band, lr=lr, mark_spikes=False,
                         name="log_z_curves")


def embedding_norm_curves(grid: F.GridData, smooth: int = 1, *, band: str | None = "minmax",
                          lr: float | None = None) -> Figure:
    """L2 norm of the embedding matrix per arm over steps (embedding weight decay ablation)."""
    return metric_curves(grid, M.PARAM_NORM_EMBED, smooth=smooth, band=band, lr=lr, mark_spikes=False,
                         name="embedding_norm_curves")


def _layer_frame(grid: F.GridData, key: str, run_ids, *, heads: str = "max") -> pd.DataFrame:
    """(run_id, step, layer, value) of a per-layer key: the dense artifact (per-head rows reduced
    by `heads` = "max", or only head -1 rows with "none"), else the `key/layer_i` series."""
    ids = set(run_ids)
    d = grid.dense
    d = d[(d["key"] == key) & (d["layer"] >= 0) & d[F.RUN_ID].isin(ids)] if len(d) else d.iloc[0:0]
    if heads == "none":
        d = d[d["head"] == -1]
    d = d.assign(value=pd.to_numeric(d["value"], errors="coerce"))
    d = d.groupby([F.RUN_ID, "step", "layer"], as_index=False)["value"].max()
    rest = ids - set(d[F.RUN_ID])
    s = grid.series
    prefix = key + "/layer_"
    s = s[s[F.RUN_ID].isin(rest) & s["metric"].astype(str).str.startswith(prefix)]
    if len(s):
        layer = pd.to_numeric(s["metric"].str[len(prefix):], errors="coerce")
        s = s.assign(layer=layer, value=pd.to_numeric(s["value"], errors="coerce")).dropna(subset=["layer"])
        s = s.assign(layer=s["layer"].astype(int))[[F.RUN_ID, "step", "layer", "value"]]
        d = pd.concat([d, s], ignore_index=True) if len(d) else s
    out = d.reset_index(drop=True)
    out.loc[~np.isfinite(out["value"].astype(float)), "value"] = np.nan
    return out


def _with_signal(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """(`frame` without its NaN rows, None), or (an empty frame, why) when nothing in it is worth
    a panel: no finite value, or only zeros."""
    reason = no_signal(frame["value"]) if len(frame) else "no data"
    if reason is not None:
        return frame.iloc[0:0], reason
    return frame[frame["value"].notna()], None


def _layer_panels(fig, axes_row, grid: F.GridData, frame: pd.DataFrame, arms: list[str], runs: pd.DataFrame,
                  ylabel: str, logy: bool = False) -> int:
    """One panel per arm with the seed mean of every layer (colour by layer); returns n_layers."""
    layers = sorted(frame["layer"].unique()) if len(frame) else []
    colors = dict(zip(layers, S.layer_colors(len(layers))))
    for ax, arm in zip(axes_row, arms):
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
        ax.set_title(arm_title(arm, grid.baseline) + f" (n={sub[F.RUN_ID].nunique()})")
        ax.set_xlabel(S.STEP_LABEL)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
    return len(layers)


def _layer_key(fig, axes, n_layers: int) -> None:
    """Legend for few layers, a colour bar for many."""
    if n_layers == 0:
        return
    if n_layers <= 8:
        axes[0, -1].legend(loc="best", ncols=1 + n_layers // 5)
    else:
        sm = ScalarMappable(norm=Normalize(0, n_layers - 1), cmap=S.LAYER_CMAP)
        fig.colorbar(sm, ax=list(axes.ravel()), label=S.LAYER_LABEL, shrink=0.8)


def _arms_with(grid: F.GridData, frames: list[pd.DataFrame],
               runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(arms with rows in any of `frames`, arms without)."""
    have = set().union(*(set(f[F.RUN_ID]) for f in frames))
    arms = [a for a in grid.arms if set(runs.loc[runs[F.ARM] == a, F.RUN_ID]) & have]
    return arms, [a for a in grid.arms if a not in arms]


def _lr_suffix(lr: float | None) -> str:
    return f", lr={lr:g}" if lr is not None else ""


@S.styled
def attn_logit_curves(grid: F.GridData, *, lr: float | None = None, logy: bool = False) -> Figure:
    """Max attention logit per layer over steps, one panel per arm, seed mean, colour by layer.

    From the dense key attn/logit_max (max over heads), else the attn/logit_max/layer_i series.
    With several LRs only one is shown (`reference_lr`).
    """
    lr = reference_lr(grid.runs, grid.baseline, lr)
    runs = filter_lr(grid.runs, lr)
    frame, reason = _with_signal(_layer_frame(grid, M.ATTN_LOGIT_MAX, runs[F.RUN_ID]))
    if reason is not None:
        raise MissingData(f"{M.ATTN_LOGIT_MAX} (dense or per-layer series): {reason} in grid {grid.name!r}")
    arms, missing = _arms_with(grid, [frame], runs)
    fig, axes = new_figure("attn_logit_curves", 1, len(arms), sharey=True)
    for arm in missing:
        skip(fig, arm, f"no {M.ATTN_LOGIT_MAX} data")
    n_layers = _layer_panels(fig, axes[0], grid, frame, arms, runs, S.axis_label(M.ATTN_LOGIT_MAX), logy)
    _layer_key(fig, axes, n_layers)
    return finish(fig, f"{grid.name}: max attention logit per layer, seed mean{_lr_suffix(lr)}")


@S.styled
def update_rms_and_eps(grid: F.GridData, *, lr: float | None = None) -> Figure:
    """A row of panels per key, one column per arm: update/rms per layer and the optim/eps_regime
    share per layer (dense keys, head -1), seed mean over steps. A key with no finite non-zero
    value has no row (the title says so); with neither there is no figure."""
    lr = reference_lr(grid.runs, grid.baseline, lr)
    runs = filter_lr(grid.runs, lr)
    keys = (M.UPDATE_RMS, M.OPTIM_EPS_REGIME)
    checked = {k: _with_signal(_layer_frame(grid, k, runs[F.RUN_ID], heads="none")) for k in keys}
    rows = [(k, frame) for k, (frame, reason) in checked.items() if reason is None]
    if not rows:
        raise MissingData("; ".join(f"{k}: {reason}" for k, (_, reason) in checked.items())
                          + f" in grid {grid.name!r}")
    arms, missing = _arms_with(grid, [frame for _, frame in rows], runs)
    fig, axes = new_figure("update_rms_and_eps", len(rows), len(arms), sharex=True, sharey="row")
    for arm in missing:
        skip(fig, arm, f"no {keys[0]} or {keys[1]} data")
    for key, (_, reason) in checked.items():
        if reason is not None:
            skip(fig, key, reason)
    n_layers = 0
    for row, (key, frame) in enumerate(rows):
        n_layers = max(n_layers, _layer_panels(fig, axes[row], grid, frame, arms, runs, S.axis_label(key)))
    _layer_key(fig, axes, n_layers)
    return finish(fig, f"{grid.name}: Adam update RMS and eps regime per layer, seed mean{_lr_suffix(lr)}")


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half way between neighbours)."""
    x = np.asarray(x, dtype=float)
    if x.size == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


@S.styled
def layer_grad_heatmap(grid: F.GridData, run_id: str, key: str = M.GRAD_NORM) -> Figure:
    """Per-layer grad norm of one run (dense `key`, head -1) as a layer x step heatmap, log colour.

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
    fig, axes = new_figure(f"layer_grad_heatmap_{run_id}", width=8.0, height=1.8 + 0.25 * len(layers))
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
                         shading="flat")
    mesh.set_gid("heatmap")
    fig.colorbar(mesh, ax=ax, label=S.axis_label(key) + " per layer", pad=0.01)
    ax.set_yticks(np.arange(len(layers)), [str(x) for x in layers])
    ax.set_xlabel(S.STEP_LABEL)
    ax.set_ylabel(S.LAYER_LABEL)
    top = ax.get_xaxis_transform()
    ev = spike_events(grid, [run_id])
    if len(ev):
        xs = ev["step"].to_numpy(dtype=float)
        ax.plot(xs, np.full(xs.size, 1.0), transform=top, linestyle="none", marker=2, markersize=8,
                markeredgewidth=2, color=S.SPIKE_COLOR, clip_on=False, gid="spike_ticks")
        pos = {lay: i for i, lay in enumerate(layers)}
        lead = [(x, pos[int(lay)]) for x, lay in zip(xs, ev["leading_layer"])
                if pd.notna(lay) and int(lay) in pos]
        if lead:
            ax.plot([p[0] for p in lead], [p[1] for p in lead], linestyle="none", marker="o", mfc="none",
                    mec="cyan", markersize=7, gid="spike_leading")
    row = grid.runs[grid.runs[F.RUN_ID] == run_id]
    run_name = str(row[F.RUN_NAME].iloc[0]) if len(row) and pd.notna(row[F.RUN_NAME].iloc[0]) else run_id
    if len(row) and row[F.STATUS].iloc[0] == "diverged" and pd.notna(row[F.DIVERGED_AT_STEP].iloc[0]):
        ax.plot([float(row[F.DIVERGED_AT_STEP].iloc[0])], [1.04], transform=top, marker=S.DIVERGED_MARKER,
                color="k", markeredgewidth=2, clip_on=False, linestyle="none", gid="diverged")
    return finish(fig, f"{run_name}: per-layer {key} (ticks: spikes, circles: leading layer)")
