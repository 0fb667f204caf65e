"""Per-run summary figures: LR sensitivity, growth exponent vs width, spike scores, forest plots.

Statistics come in as frames (`reports.stats.compare_arms` / `lr_sensitivity` output, or frames
built by hand); nothing here computes paired tests. Forest plots switch to a symmetric-log axis
when the arms' differences span two decades or more (+8 next to +17,000), and print every value
beside its row. Artist gids, for callers and tests:

- lr sensitivity: `mean|arm`, `seeds|arm` (non-diverged runs), `diverged|arm`, `optimal|arm` in
  the loss panel; `attn_mean|arm`, `attn_seeds|arm`, `attn_diverged|arm` in the attention panel;
- growth: `mean|init`, `points|init`, `zero` per panel;
- spike scores: `bar|arm`, `seeds|arm`, `ci|arm` (a vertical segment), `p|arm` (text);
- forest: `diff|arm`, `ci|arm` (a horizontal segment), `zero`; the values, p and n of each row
  are the tick labels of the right-hand axis (`forest_annotations`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullLocator
from scipy import stats as sps

from reports import frames as F
from reports import style as S
from reports.figures_common import (
    SETTLED,
    MissingData,
    arm_order,
    arm_title,
    colors_of,
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
    panel_grid,
    reference_lr,
    runs_of,
    skip,
    tick_text,
)
from reports.stats import too_few_pairs
from reports.tables import fmt_sig
from stability import metric_names as M

COMPARE_COLUMNS = ("arm", "metric", "n_pairs", "mean_diff", "median_diff", "ci_low", "ci_high", "p_value",
                   "p_holm", "p_improve", "note")
FOREST_COLUMNS = {"single": 1, "double": 2}  # forest panels need room for arm names
SYMLOG_DECADES = 2.0  # forest plots go symmetric-log when |differences| span this many decades


def _baseline_of(data, baseline: str | None) -> str | None:
    return baseline if baseline is not None else getattr(data, "baseline", None)


def _name_of(data) -> str:
    return S.plain(getattr(data, "name", "runs"))


# -------------------------------------------------------------------------- LR sensitivity

def _settled(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished and diverged runs with an LR, `_y` the loss a sweep counts (a diverged run at its
    loss at init, as Wortsman et al.) and `_div` whether it diverged."""
    runs = runs[runs[F.STATUS].isin(SETTLED) & runs[F.LR].notna()]
    diverged = (runs[F.STATUS] == "diverged").to_numpy()
    y = np.where(diverged, runs[F.LOSS_AT_INIT].astype(float), runs[metric].astype(float))
    return runs.assign(_y=y, _div=diverged)


def _sweep(ax: Axes, r: pd.DataFrame, col: str, color: str, prefix: str, label: str) -> bool:
    """One arm's sweep on `ax`: seed mean per LR as a line, seeds as points, diverged runs as x;
    whether a diverged run was drawn."""
    r = r[np.isfinite(r[col].astype(float))]
    if col != "_y":
        r = r[r[col].astype(float) > 0]
    if not len(r):
        return False
    arm = r[F.ARM].iloc[0]
    mean = r.groupby(F.LR)[col].mean()
    ax.plot(mean.index.to_numpy(), mean.to_numpy(), "-", color=color, label=label, gid=f"{prefix}mean|{arm}",
            zorder=3)
    ok, bad = r[~r["_div"]], r[r["_div"]]
    ax.plot(ok[F.LR].to_numpy(float), ok[col].to_numpy(float), linestyle="none", marker="o", color=color,
            alpha=0.65, markersize=3, gid=f"{prefix}seeds|{arm}", label="_seeds", zorder=4)
    if len(bad):
        ax.plot(bad[F.LR].to_numpy(float), bad[col].to_numpy(float), linestyle="none",
                marker=S.DIVERGED_MARKER, markersize=6, markeredgewidth=1.6, color=color,
                gid=f"{prefix}diverged|{arm}", label="_diverged", zorder=5)
    return bool(len(bad))


def _optimum(ax: Axes, sens: pd.DataFrame | None, arm: str, color: str) -> bool:
    """A star at the arm's optimal LR and best loss (from the `lr_sensitivity` frame)."""
    if sens is None or arm not in sens.index:
        return False
    opt, best = float(sens.loc[arm, "optimal_lr"]), float(sens.loc[arm, "best_loss"])
    if not (np.isfinite(opt) and np.isfinite(best)):
        return False
    ax.plot([opt], [best], linestyle="none", marker=S.OPTIMUM_MARKER, markersize=8, color=color,
            markeredgecolor=S.MARKER_EDGE, markeredgewidth=0.5, gid=f"optimal|{arm}", label="_optimal",
            zorder=6)
    return True


def _sweep_label(arm: str, baseline: str | None, sens: pd.DataFrame | None) -> str:
    label = arm_title(arm, baseline)
    if sens is not None and arm in sens.index and np.isfinite(float(sens.loc[arm, "sensitivity"])):
        label += f", sensitivity {float(sens.loc[arm, 'sensitivity']):.3g}"
    return label


def _sweep_proxies(any_div: bool, any_opt: bool) -> list[Line2D]:
    out = [Line2D([], [], marker="o", linestyle="none", color="0.5", markersize=3, label="one seed")]
    if any_div:
        out.append(Line2D([], [], marker=S.DIVERGED_MARKER, linestyle="none", color="0.3",
                          markeredgewidth=1.6, label="diverged (loss counted at init)"))
    if any_opt:
        out.append(Line2D([], [], marker=S.OPTIMUM_MARKER, linestyle="none", color="0.6", markersize=8,
                          markeredgecolor=S.MARKER_EDGE, markeredgewidth=0.5, label="optimal LR"))
    return out


@S.styled
def lr_sensitivity_figure(grid, lrsens_df: pd.DataFrame | None = None, *, metric: str = F.FINAL_EVAL_LOSS,
                          baseline: str | None = None, width: str = "double",
                          colors: dict[str, str] | None = None) -> Figure:
    """LR sweeps in the kind of Wortsman et al. Fig. 1: final eval loss against peak LR (log x)
    per arm and, when the runs have it, the max attention logit against LR (log y) beside it.

    One point per seed, the seed mean as a line. A diverged run counts at its `loss_at_init` (the
    untrained model's loss) with an x, in the mean too; its attention logit is the max it reached.
    Runs neither finished nor diverged are left out. `lrsens_df` (rows arm, sensitivity,
    optimal_lr, best_loss) adds the sensitivity to the legend and a star at each arm's optimum.
    Needs >= 2 LRs.
    """
    runs = runs_of(grid)
    baseline = _baseline_of(grid, baseline)
    lrs = lr_values(runs)
    if len(lrs) < 2:
        raise MissingData(f"the LR sensitivity figure needs >= 2 learning rates, found {len(lrs)}")
    settled = _settled(runs, metric)
    attn = settled[F.MAX_ATTN_LOGIT].astype(float) if F.MAX_ATTN_LOGIT in settled else pd.Series(dtype=float)
    with_attn = no_signal(attn) is None
    fig, panels = panel_figure("lr_sensitivity", 2 if with_attn else 1, width=width, sharex=True)
    left_out = runs[~runs[F.STATUS].isin(SETTLED)]
    if len(left_out):
        skip(fig, f"{len(left_out)} runs", "neither finished nor diverged")
    if not with_attn:
        skip(fig, "attention panel", f"no {F.MAX_ATTN_LOGIT} value")
    all_arms = arm_order(runs, baseline)
    colors = colors_of(all_arms, baseline, colors)
    sens = lrsens_df.set_index("arm") if lrsens_df is not None and len(lrsens_df) else None
    any_div = any_opt = False
    handles = []
    for arm in all_arms:
        r = settled[settled[F.ARM] == arm]
        if not len(r) or not np.isfinite(r["_y"].astype(float)).any():
            skip(fig, arm, f"no settled run with {metric}")
            continue
        label = _sweep_label(arm, baseline, sens)
        any_div |= _sweep(panels[0], r, "_y", colors[arm], "", label)
        any_opt |= _optimum(panels[0], sens, arm, colors[arm])
        if with_attn:
            any_div |= _sweep(panels[1], r, F.MAX_ATTN_LOGIT, colors[arm], "attn_", label)
        handles.append(Line2D([], [], color=colors[arm], label=label))
    if all(a in fig.skipped for a in all_arms):
        raise MissingData(f"no settled run has {metric} or loss_at_init")
    for ax in panels:
        ax.set_xscale("log")
        ax.set_xticks(lrs, [tick_text(x) for x in lrs])
        ax.minorticks_off()
    panels[0].set_ylabel(S.axis_label(metric))
    panels[0].set_title(S.metric_name(metric))
    if with_attn:
        log_scale(panels[1])
        panels[1].set_ylabel(S.axis_label(F.MAX_ATTN_LOGIT))
        panels[1].set_title(S.metric_name(F.MAX_ATTN_LOGIT))
    outer_labels(panels, S.LR_LABEL)
    figure_legend(fig, handles + _sweep_proxies(any_div, any_opt))
    return finish(fig, f"{_name_of(grid)}: learning-rate sensitivity per arm\n"
                       "points: seeds; line: seed mean")


# ------------------------------------------------------------------------------ growth vs width

def _growth_frame(table) -> pd.DataFrame:
    """Columns init, d_model, growth_act, growth_grad (+ seed) from runs or a probe growth table
    (which may name the exponents lambda_act / lambda_grad)."""
    df = table.runs if isinstance(table, F.GridData) else pd.DataFrame(table)
    df = df.rename(columns={k: v for k, v in (("lambda_act", F.GROWTH_ACT), ("lambda_grad", F.GROWTH_GRAD))
                            if k in df.columns and v not in df.columns})
    need = {F.INIT, F.D_MODEL}
    if not need <= set(df.columns) or not ({F.GROWTH_ACT, F.GROWTH_GRAD} & set(df.columns)):
        raise MissingData(f"a growth table needs columns init, d_model and growth_act/growth_grad "
                          f"(or lambda_act/lambda_grad); got {list(df.columns)}")
    out = pd.DataFrame({F.INIT: df[F.INIT].astype(object).where(df[F.INIT].notna(), "unspecified"),
                        F.D_MODEL: pd.to_numeric(df[F.D_MODEL], errors="coerce")})
    for col in (F.GROWTH_ACT, F.GROWTH_GRAD):
        out[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    return out.dropna(subset=[F.D_MODEL])


@S.styled
def growth_vs_width(table, *, width: str = "double") -> Figure:
    """Growth exponent lambda at init against d_model per init scheme (normal vs mitchell, say):
    activations and gradients panels, zero line (a good init keeps both near 0 at every width).
    Points per seed (or run), line through the mean per width. `table`: a DataFrame (runs, or
    the probe `growth_table` output) or a GridData (its runs)."""
    df = _growth_frame(table)
    if not len(df) or df[[F.GROWTH_ACT, F.GROWTH_GRAD]].isna().all().all():
        raise MissingData("no growth exponent values")
    inits = list(dict.fromkeys(df[F.INIT]))
    colors = S.arm_colors(inits)
    widths = sorted(df[F.D_MODEL].unique())
    fig, panels = panel_figure("growth_vs_width", 2, width=width, sharex=True)
    for ax, col in zip(panels, (F.GROWTH_ACT, F.GROWTH_GRAD)):
        ax.axhline(0.0, color="0.3", linewidth=0.7, linestyle="--", gid="zero")
        sub = df.dropna(subset=[col])
        if not len(sub):
            no_data(ax, "no values")
            skip(fig, col, "no values")
        for init in inits:
            g = sub[sub[F.INIT] == init]
            if not len(g):
                continue
            mean = g.groupby(F.D_MODEL)[col].mean()
            ax.plot(mean.index.to_numpy(float), mean.to_numpy(), "-", color=colors[init], label=S.plain(init),
                    gid=f"mean|{init}")
            ax.plot(g[F.D_MODEL].to_numpy(float), g[col].to_numpy(float), linestyle="none", marker="o",
                    color=colors[init], alpha=0.6, markersize=3, gid=f"points|{init}", label="_points")
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [f"{w:g}" for w in widths])
        ax.minorticks_off()
        ax.set_ylabel(S.axis_label(col))
    panels[0].set_title("Activations")
    panels[1].set_title("Gradients")
    outer_labels(panels, S.D_MODEL_LABEL)
    handles = [Line2D([], [], color=colors[i], marker="o", markersize=3, label=S.plain(i)) for i in inits]
    figure_legend(fig, handles, title="init")
    return finish(fig, r"Growth exponent $\lambda$ at init vs model width" + "\npoints: seeds; line: mean")


# -------------------------------------------------------------------------------- spike scores

def _t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean (NaN for fewer than 2 values)."""
    if x.size < 2:
        return float("nan"), float("nan")
    half = sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


_SPIKE_METRICS = ((F.SPIKE_SCORE_LOSS, M.SPIKE_SCORE_LOSS, "Loss"),
                  (F.SPIKE_SCORE_GRAD_NORM, M.SPIKE_SCORE_GRAD_NORM, "Gradient norm"))


def _p_text(row) -> str:
    """"Holm p = 0.02" for one compare row, "" without a p-value (too few seeds is said once,
    under the title: `_few_seeds_line`; a row's note is in the tables and the forest plots)."""
    p = pd.to_numeric(pd.Series([row.get("p_holm")]), errors="coerce").iloc[0]
    return f"Holm p = {p:.2g}" if np.isfinite(p) else ""


def _note_text(row) -> str:
    """A compare row's note in words (raw keys named), shown literally; "" without one."""
    note = row.get("note")
    if note is None or (isinstance(note, float) and np.isnan(note)) or not str(note).strip():
        return ""
    return S.plain(S.humanize(note))


def _few_seeds_line(rows: pd.DataFrame) -> str:
    """"\nno p-values: too few seeds (n=2) for wilcoxon" for a title, once; "" when p-values exist."""
    if not len(rows) or not {"n_pairs", "test"} <= set(rows.columns):
        return ""
    few = rows[too_few_pairs(rows)]
    if not len(few):
        return ""
    ns = "/".join(str(int(n)) for n in sorted(few["n_pairs"].unique()))
    tests = " or ".join(dict.fromkeys(few["test"].astype(str)))
    return f"\nno p-values: too few seeds (n={ns}) for {tests}"


def _compare_rows(compare_df: pd.DataFrame | None, names: tuple[str, ...]) -> pd.DataFrame:
    if compare_df is None or not len(compare_df):
        return pd.DataFrame(columns=list(COMPARE_COLUMNS))
    return compare_df[compare_df["metric"].isin(names)]


def _at_lr(rows: pd.DataFrame, lr: float | None) -> pd.DataFrame:
    """The compare rows at learning rate `lr` (all of them for None or without an lr column)."""
    if lr is None or "lr" not in rows.columns:
        return rows
    return rows[np.isclose(rows["lr"].to_numpy(dtype=float), lr, rtol=1e-6, atol=0.0)]


def _spike_panels(runs: pd.DataFrame) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(the spike-score panels with something to show, {panel: why not} for the others): a score
    that is 0 in every run (no spikes) or missing everywhere makes an empty panel."""
    panels, dropped = [], {}
    for col, key, what in _SPIKE_METRICS:
        values = runs[col] if col in runs.columns else pd.Series(dtype=float)
        reason = no_signal(values.astype(float))
        if reason is None:
            panels.append((col, key, what))
        else:
            zero = reason == "every value is 0"
            why = f"{col} is 0 in every run: no spikes" if zero else f"no {col} value"
            dropped[f"{what.lower()} panel"] = why
    return panels, dropped


def _arm_ticks(ax: Axes, arms: list[str], baseline: str | None) -> None:
    """Arm names under the bars, slanted when there are several."""
    labels = [arm_title(a, baseline) for a in arms]
    slant = len(arms) > 2
    ax.set_xticks(range(len(arms)), labels, rotation=30 if slant else 0, ha="right" if slant else "center")
    ax.set_xlabel(S.ARM_LABEL)
    ax.grid(False, axis="x")


def _bar_proxies(seeds: bool) -> list:
    out = [Patch(facecolor="0.6", alpha=0.5, label="seed mean" if seeds else "mean paired difference")]
    if seeds:
        out.append(Line2D([], [], marker="o", linestyle="none", color="0.5", markeredgecolor=S.MARKER_EDGE,
                          markeredgewidth=0.4, markersize=3, label="one seed"))
    out.append(Line2D([], [], color="k", linewidth=1.0, label="95% t-interval" if seeds else "CI"))
    return out


def _score_bar(ax: Axes, i: int, x: np.ndarray, color: str, arm: str) -> float:
    """Bar (seed mean), points (seeds) and whisker (t-interval, clipped at 0) of one arm; returns
    the top of what was drawn (for an annotation)."""
    ax.bar([i], [x.mean()], color=color, alpha=0.45, width=0.6, gid=f"bar|{arm}")
    jitter = np.linspace(-0.15, 0.15, x.size) if x.size > 1 else np.zeros(1)
    ax.plot(i + jitter, x, linestyle="none", marker="o", color=color, markeredgecolor=S.MARKER_EDGE,
            markeredgewidth=0.4, markersize=3, gid=f"seeds|{arm}")
    lo, hi = _t_interval(x)
    lo = max(lo, 0.0)  # a score is >= 0
    if np.isfinite(lo):
        ax.vlines([i], lo, hi, color="k", linewidth=1.0, gid=f"ci|{arm}")
    return max(x.max(), hi if np.isfinite(hi) else x.max())


@S.styled
def spike_scores_figure(data, compare_df: pd.DataFrame | None = None, *, lr: float | None = None,
                        baseline: str | None = None, width: str = "double",
                        colors: dict[str, str] | None = None) -> Figure:
    """Spike scores per arm, a panel each for loss and gradient norm (OLMo 2 definition, percent).

    `data` a GridData or runs frame: bars of the seed mean, one point per seed, whiskers the 95%
    Student-t interval of the mean; `compare_df` (compare_arms output) adds Holm p above each
    non-baseline arm. `data` a compare frame itself (it has `mean_diff`): bars of the mean paired
    difference vs the baseline with whiskers [ci_low, ci_high]. Scores are >= 0, so the t-interval
    is clipped at 0. With several LRs one is shown (`reference_lr`). A panel whose score is 0 (or
    missing) in every run is left out and named under the title; with neither panel there is no
    figure (`MissingData`).
    """
    if isinstance(data, pd.DataFrame) and "mean_diff" in data.columns:
        return _spike_diffs(data, baseline, width=width, colors=colors)
    runs = runs_of(data)
    baseline = _baseline_of(data, baseline)
    lr = reference_lr(runs, baseline, lr)
    runs = filter_lr(runs, lr)
    arms = arm_order(runs, baseline)
    cols, dropped = _spike_panels(runs)
    if not cols or not arms:
        raise MissingData("; ".join(dropped.values()) or "no runs")
    colors = colors_of(arms, baseline, colors)
    fig, panels = panel_figure("spike_scores", len(cols), width=width)
    for what, reason in dropped.items():
        skip(fig, what, reason)
    for ax, (col, key, what) in zip(panels, cols):
        rows = _at_lr(_compare_rows(compare_df, (col, key)), lr)
        for i, arm in enumerate(arms):
            x = runs.loc[runs[F.ARM] == arm, col].astype(float).to_numpy()
            x = x[np.isfinite(x)]
            if not x.size:
                skip(fig, f"{arm} ({what.lower()})", f"no {col} values")
                continue
            top = _score_bar(ax, i, x, colors[arm], arm)
            r = rows[rows["arm"] == arm]
            if arm != baseline and len(r) and (text := _p_text(r.iloc[0])):
                ax.annotate(text, (i, top), xytext=(0, 3), textcoords="offset points", ha="center",
                            fontsize=6, gid=f"p|{arm}")
        _arm_ticks(ax, arms, baseline)
        ax.set_ylabel(S.axis_label(col))
        ax.set_title(what)
    shown = _compare_rows(compare_df, tuple(n for col, key, _ in cols for n in (col, key)))
    figure_legend(fig, _bar_proxies(seeds=True))
    return finish(fig, f"{_name_of(data)}: spike scores per arm (% of points ≥ 7 sd from the running "
                       f"mean){lr_title(lr)}" + _few_seeds_line(shown))


def _spike_diff_panels(compare_df: pd.DataFrame) -> tuple[list, dict[str, str]]:
    """The spike-score difference panels with a non-zero difference, and why the others are not."""
    panels, dropped = [], {}
    for *names, what in _SPIKE_METRICS:
        rows = _compare_rows(compare_df, tuple(names))
        reason = no_signal(rows["mean_diff"].astype(float)) if len(rows) else "no rows"
        if reason is None:
            panels.append((names, what))
        elif len(rows):
            zero = reason == "every value is 0"
            why = "every paired difference is 0" if zero else "no finite paired difference"
            dropped[f"{what.lower()} panel"] = why
    return panels, dropped


def _diff_bar(ax: Axes, i: int, r: pd.Series, color: str, key: str) -> None:
    """One compare row as a bar (mean paired difference), a CI whisker and its Holm p."""
    d, lo, hi = float(r["mean_diff"]), float(r["ci_low"]), float(r["ci_high"])
    ax.bar([i], [d], color=color, alpha=0.6, width=0.6, gid=f"bar|{key}")
    if np.isfinite(lo) and np.isfinite(hi):
        ax.vlines([i], lo, hi, color="k", linewidth=1.0, gid=f"ci|{key}")
    if text := _p_text(r):
        ax.annotate(text, (i, max(d, hi if np.isfinite(hi) else -np.inf)), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=6, gid=f"p|{key}")


def _spike_diffs(compare_df: pd.DataFrame, baseline: str | None, *, width: str,
                 colors: dict[str, str] | None) -> Figure:
    """Bars of the paired spike-score differences, one per compare row (arm, and LR when the rows
    hold several); a panel whose differences are all 0 is left out."""
    panels, dropped = _spike_diff_panels(compare_df)
    if not panels:
        raise MissingData("the compare frame has no spike-score difference to show"
                          + (f" ({'; '.join(dropped.values())})" if dropped else ""))
    arms = list(dict.fromkeys(compare_df["arm"]))
    colors = colors_of(([baseline] if baseline else []) + arms, baseline, colors)
    fig, axes = panel_figure("spike_scores", len(panels), width=width)
    for what, reason in dropped.items():
        skip(fig, what, reason)
    base = S.plain(baseline or "baseline")
    for ax, (names, what) in zip(axes, panels):
        rows = _by_arm_then_lr(_compare_rows(compare_df, tuple(names)))
        ax.axhline(0.0, color="0.3", linewidth=0.7, gid="zero")
        keys = _forest_keys(rows)
        for i, ((key, label), (_, r)) in enumerate(zip(keys, rows.iterrows())):
            if not np.isfinite(float(r["mean_diff"])):
                skip(fig, f"{label} ({what.lower()})", "no paired difference")
                continue
            _diff_bar(ax, i, r, colors[r["arm"]], key)
        ax.set_xticks(range(len(keys)), [label for _, label in keys], rotation=30 if len(keys) > 2 else 0,
                      ha="right" if len(keys) > 2 else "center")
        ax.set_xlabel(S.ARM_LABEL)
        ax.grid(False, axis="x")
        ax.set_ylabel("Δ spike score (points of %)")
        ax.set_title(what)
    shown = _compare_rows(compare_df, tuple(n for names, _ in panels for n in names))
    figure_legend(fig, _bar_proxies(seeds=False))
    return finish(fig, f"Spike scores: paired difference vs {base}" + _few_seeds_line(shown))


# ----------------------------------------------------------------------------------- forest plots

def _forest_rows(compare_df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The compare rows of `metric` (an arm's LRs together), or `MissingData` saying why they
    make no forest plot."""
    missing = {"arm", "metric", "mean_diff", "ci_low", "ci_high"} - set(compare_df.columns)
    if missing:
        raise MissingData(f"compare frame lacks columns {sorted(missing)}")
    rows = compare_df[compare_df["metric"] == metric]
    if not len(rows):
        have = ", ".join(map(str, dict.fromkeys(compare_df["metric"])))
        raise MissingData(f"no compare rows for metric {metric!r} (have: {have})")
    diverged = [c for c in ("n_diverged_arm", "n_diverged_base") if c in rows.columns]
    if metric == F.DIVERGED_AT_STEP and diverged and not rows[diverged].to_numpy().any():
        raise MissingData("no run diverged")
    spread = rows[["mean_diff", "ci_low", "ci_high"]].astype(float)
    if not np.isfinite(spread["mean_diff"]).any():
        if metric == F.DIVERGED_AT_STEP:
            raise MissingData("runs that never diverged count at +inf: no finite mean difference")
        raise MissingData(f"no arm has a finite mean difference in {metric}")
    if no_signal(spread) == "every value is 0":
        raise MissingData(f"every paired difference in {metric} is 0")
    return _by_arm_then_lr(rows)


def _by_arm_then_lr(rows: pd.DataFrame) -> pd.DataFrame:
    """Compare rows with each arm's LRs next to each other (arms in first-appearance order)."""
    if "lr" not in rows.columns:
        return rows
    rank = {a: i for i, a in enumerate(dict.fromkeys(rows["arm"]))}
    return rows.assign(_rank=rows["arm"].map(rank)).sort_values(["_rank", "lr"], kind="stable")


def _forest_keys(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(gid key, tick label) per compare row: the arm, or with several LRs "arm|lr" and "arm, lr=x"
    (one row per arm and LR, none hidden behind another)."""
    lrs = rows["lr"] if "lr" in rows.columns else pd.Series(np.nan, index=rows.index)
    if lrs.nunique(dropna=False) <= 1:
        return [(str(a), S.plain(a)) for a in rows["arm"]]
    return [(f"{a}|{lr_tag(lr)}", f"{S.plain(a)}, lr={lr_tag(lr)}") for a, lr in zip(rows["arm"], lrs)]


def symlog_threshold(values) -> float | None:
    """The linear range of a symmetric-log axis for these differences, or None for a linear axis.

    Symmetric-log when the non-zero |values| span `SYMLOG_DECADES` decades or more; the linear
    part reaches the power of ten above their median, so the typical differences and their CIs
    keep true proportions around 0 while the outliers (+17,921 next to +193) are compressed but
    readable.
    """
    x = np.abs(np.asarray(values, dtype=float))
    x = x[np.isfinite(x) & (x > 0)]
    if x.size < 2 or math.log10(x.max() / x.min()) < SYMLOG_DECADES:
        return None
    return float(10.0 ** math.ceil(math.log10(np.median(x))))


def symlog_ticks(lo: float, hi: float, thresh: float, max_ticks: int) -> list[float]:
    """0, ±thresh and the powers of ten beyond it inside [lo, hi], every other one when there
    would be more than `max_ticks`."""
    top = max(abs(lo), abs(hi))
    powers = [thresh * 10.0 ** k for k in range(int(math.log10(max(top / thresh, 1.0))) + 1)]
    step = 1
    while 1 + 2 * len(powers[::step]) > max_ticks and step < len(powers):
        step += 1
    keep = powers[::step]
    return sorted([0.0] + [v for v in keep if v <= hi] + [-v for v in keep if -v >= lo])


def number_text(x: float) -> str:
    """3 significant digits, thousands separated: "0.0123", "193", "17,921"."""
    return f"{x:,.0f}" if np.isfinite(x) and abs(x) >= 1000 else fmt_sig(x)


def forest_annotation(row) -> str:
    """The right-hand text of a forest row: "+17,921 [15,662, 18,461]  Holm p = 0.02  n=3", then
    the row's note in parentheses."""
    d, lo, hi = (float(row[c]) for c in ("mean_diff", "ci_low", "ci_high"))
    value = ""
    if np.isfinite(d):
        ci = f" [{number_text(lo)}, {number_text(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        value = ("+" if d > 0 else "") + number_text(d) + ci
    n = row.get("n_pairs")
    note = _note_text(row)
    count = f"n={int(n)}" if n is not None and pd.notna(n) else ""
    bits = (value, _p_text(row), count, f"({note})" if note else "")
    return "  ".join(t for t in bits if t)


def _draw_forest(ax: Axes, fig: Figure, rows: pd.DataFrame, colors: dict[str, str], *,
                 annotate: bool) -> None:
    """The rows of one metric on `ax`: CI whiskers, mean points, zero line, arm ticks, symlog
    when the differences span decades; with `annotate`, the values on a right-hand axis."""
    keys = _forest_keys(rows)
    ax.axvline(0.0, color="0.3", linewidth=0.7, linestyle="--", gid="zero")
    ys = np.arange(len(keys))[::-1]
    for y, (key, label), (_, r) in zip(ys, keys, rows.iterrows()):
        color = colors[r["arm"]]
        d, lo, hi = float(r["mean_diff"]), float(r["ci_low"]), float(r["ci_high"])
        if np.isfinite(lo) and np.isfinite(hi):
            ax.hlines([y], lo, hi, color=color, linewidth=1.8, gid=f"ci|{key}")
        if np.isfinite(d):
            ax.plot([d], [y], marker="o", markersize=4.5, color=color, markeredgecolor=S.MARKER_EDGE,
                    markeredgewidth=0.5, linestyle="none", gid=f"diff|{key}")
        else:
            skip(fig, label, "no mean difference")
    ax.set_yticks(ys, [label for _, label in keys])
    ax.set_ylim(-0.7, len(keys) - 0.3)
    ax.grid(False, axis="y")
    if (thresh := symlog_threshold(rows["mean_diff"])) is not None:
        ax.set_xscale("symlog", linthresh=thresh, linscale=1.0)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tick_text(v)))
        _fit_x(ax, rows[["mean_diff", "ci_low", "ci_high"]].to_numpy(dtype=float))
        max_ticks = 5 if getattr(fig, "width_name", "double") == "single" else 9
        ax.set_xticks(symlog_ticks(*ax.get_xlim(), thresh, max_ticks))
        ax.xaxis.set_minor_locator(NullLocator())
    if annotate:
        right = ax.secondary_yaxis("right")
        right.set_yticks(ys, [forest_annotation(r) for _, r in rows.iterrows()])
        right.tick_params(length=0, labelsize=6.5)
        right.spines["right"].set_visible(False)
        right.set_gid("forest_annotations")


def _fit_x(ax: Axes, values: np.ndarray, pad: float = 0.05) -> None:
    """x limits around `values` and 0, padded by `pad` of the range in the axis' own (e.g.
    symmetric-log) coordinates: symlog autoscaling would waste decades on the side without data."""
    x = values[np.isfinite(values)]
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    t = ax.xaxis.get_transform()
    a, b = t.transform([lo, hi])
    span = (b - a) or 1.0
    ax.set_xlim(*t.inverted().transform([a - pad * span, b + pad * span]))


def _forest_xlabel(metric: str, baseline: str | None) -> str:
    unit = S.unit_of(metric)
    text = f"Δ {S.lower_first(S.metric_name(metric))}, arm − {S.plain(baseline or 'baseline')}"
    return text + (f" ({unit})" if unit else "")


def _forest_proxies() -> list[Line2D]:
    return [Line2D([], [], marker="o", linestyle="none", color="0.5", markeredgecolor=S.MARKER_EDGE,
                   markeredgewidth=0.5, markersize=4.5, label="mean paired difference"),
            Line2D([], [], color="0.5", linewidth=1.8, label="95% bootstrap CI")]


def forest_annotations(fig: Figure) -> dict[str, str]:
    """{tick label: right-hand text} of a one-panel forest plot (for callers and tests)."""
    ax = fig.axes[0]
    (right,) = [c for c in ax.child_axes if c.get_gid() == "forest_annotations"]
    return {t.get_text(): r.get_text() for t, r in zip(ax.get_yticklabels(), right.get_yticklabels())}


@S.styled
def forest_plot(compare_df: pd.DataFrame, metric: str, *, baseline: str | None = None, width: str = "double",
                colors: dict[str, str] | None = None) -> Figure:
    """Paired differences (arm - baseline) of `metric` per arm: the mean difference as a point, the
    CI [ci_low, ci_high] as a whisker, a zero line; the values, Holm p, n and the row's note at
    the right of each row (at double width: one column has no room, the compare table has them);
    too few seeds for p-values is said once, under the title. The axis
    is symmetric-log when the differences span decades (`symlog_threshold`). No figure
    (`MissingData`) when no arm has a finite difference or every difference is 0."""
    rows = _forest_rows(compare_df, metric)
    arms = list(dict.fromkeys(rows["arm"]))
    colors = colors_of(([baseline] if baseline else []) + arms, baseline, colors)
    n = len(_forest_keys(rows))
    fig, axes = new_figure(f"forest_{metric}", width=width, height=1.3 + 0.28 * n)
    ax = axes[0, 0]
    _draw_forest(ax, fig, rows, colors, annotate=width != "single")
    ax.set_xlabel(_forest_xlabel(metric, baseline))
    ax.set_ylabel(S.ARM_LABEL)
    figure_legend(fig, _forest_proxies())
    base = S.plain(baseline or "baseline")
    return finish(fig, f"{S.metric_name(metric)}: paired difference vs {base}" + _few_seeds_line(rows))


@S.styled
def forest_panels(compare_df: pd.DataFrame, metrics: tuple[str, ...], *, baseline: str | None = None,
                  width: str = "double", colors: dict[str, str] | None = None) -> Figure:
    """The forest plots of several metrics side by side, a panel (and an x axis of its own) each,
    for a paper's one headline figure; the values are in the per-metric plots and the tables.
    Metrics without a drawable difference are left out (named under the title)."""
    drawable, reasons = [], {}
    for metric in metrics:
        try:
            drawable.append((metric, _forest_rows(compare_df, metric)))
        except MissingData as e:
            reasons[metric] = str(e)
    if not drawable:
        raise MissingData("; ".join(f"{m}: {r}" for m, r in reasons.items()) or "no metrics")
    arms = list(dict.fromkeys(compare_df["arm"]))
    colors = colors_of(([baseline] if baseline else []) + arms, baseline, colors)
    n_rows = max(len(_forest_keys(rows)) for _, rows in drawable)
    grid_rows, _ = panel_grid(len(drawable), width, max_columns=FOREST_COLUMNS[width])
    height = (0.9 + 0.22 * n_rows) * grid_rows + 0.9
    fig, panels = panel_figure("forest_headline", len(drawable), width=width,
                               max_columns=FOREST_COLUMNS[width], height=height)
    for metric, reason in reasons.items():
        skip(fig, metric, reason)
    for ax, (metric, rows) in zip(panels, drawable):
        _draw_forest(ax, fig, rows, colors, annotate=False)
        ax.set_title(S.metric_name(metric))
        ax.set_xlabel(_forest_xlabel(metric, baseline))
    outer_labels(panels, None, S.ARM_LABEL)
    figure_legend(fig, _forest_proxies())
    base = S.plain(baseline or "baseline")
    return finish(fig, f"Paired differences vs {base}, headline metrics"
                  + _few_seeds_line(pd.concat([r for _, r in drawable])))
