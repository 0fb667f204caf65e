"""Per-run summary figures: LR sensitivity, growth exponent vs width, spike scores, forest plots.

Statistics come in as frames (`reports.stats.compare_arms` / `lr_sensitivity` output, or frames
built by hand); nothing here computes paired tests. Artist gids, for callers and tests:

- lr sensitivity: `mean|arm`, `seeds|arm` (non-diverged runs), `diverged|arm`, `optimal|arm`;
- growth: `mean|init`, `points|init`, `zero` per panel;
- spike scores: `bar|arm`, `seeds|arm`, `ci|arm` (a vertical segment), `p|arm` (text);
- forest: `diff|arm`, `ci|arm` (a horizontal segment), `annot|arm` (text), `zero`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats as sps

from reports import frames as F
from reports import style as S
from reports.figures_common import (
    SETTLED,
    MissingData,
    arm_order,
    arm_title,
    filter_lr,
    finish,
    lr_tag,
    lr_values,
    new_figure,
    no_data,
    no_signal,
    reference_lr,
    runs_of,
    skip,
)
from reports.stats import too_few_pairs
from stability import metric_names as M

COMPARE_COLUMNS = ("arm", "metric", "n_pairs", "mean_diff", "median_diff", "ci_low", "ci_high", "p_value",
                   "p_holm", "p_improve", "note")


def _baseline_of(data, baseline: str | None) -> str | None:
    return baseline if baseline is not None else getattr(data, "baseline", None)


@S.styled
def lr_sensitivity_figure(grid, lrsens_df: pd.DataFrame | None = None, *, metric: str = F.FINAL_EVAL_LOSS,
                          baseline: str | None = None) -> Figure:
    """Final eval loss against peak LR (log x) per arm: one point per seed, the seed mean as a line.

    Diverged runs are plotted at their `loss_at_init` (the untrained model's loss, as in Wortsman
    et al.) with an x, and count at that value in the mean. Runs neither finished nor diverged
    (running, failed) are left out. `lrsens_df` (rows arm, sensitivity, optimal_lr, best_loss)
    adds the sensitivity to the legend and a star at each arm's optimum. Needs >= 2 LRs.
    """
    runs = runs_of(grid)
    baseline = _baseline_of(grid, baseline)
    lrs = lr_values(runs)
    if len(lrs) < 2:
        raise MissingData(f"the LR sensitivity figure needs >= 2 learning rates, found {len(lrs)}")
    fig, axes = new_figure("lr_sensitivity", width=7.5, height=4.4)
    ax = axes[0, 0]
    left_out = runs[~runs[F.STATUS].isin(SETTLED)]
    if len(left_out):
        skip(fig, f"{len(left_out)} runs", "neither finished nor diverged")
    runs = runs[runs[F.STATUS].isin(SETTLED) & runs[F.LR].notna()]
    diverged = (runs[F.STATUS] == "diverged").to_numpy()
    y = np.where(diverged, runs[F.LOSS_AT_INIT].astype(float), runs[metric].astype(float))
    runs = runs.assign(_y=y, _div=diverged)
    all_arms = arm_order(runs_of(grid), baseline)
    colors = S.arm_colors(all_arms, baseline)
    sens = lrsens_df.set_index("arm") if lrsens_df is not None and len(lrsens_df) else None
    any_div = False
    for arm in all_arms:
        r = runs[(runs[F.ARM] == arm) & np.isfinite(runs["_y"])]
        if not len(r):
            skip(fig, arm, f"no settled run with {metric}")
            continue
        c = colors[arm]
        mean = r.groupby(F.LR)["_y"].mean()
        label = arm_title(arm, baseline)
        if sens is not None and arm in sens.index and np.isfinite(float(sens.loc[arm, "sensitivity"])):
            label += f" (sensitivity {float(sens.loc[arm, 'sensitivity']):.3g})"
        ax.plot(mean.index.to_numpy(), mean.to_numpy(), "-", color=c, label=label, gid=f"mean|{arm}",
                zorder=3)
        ok = r[~r["_div"]]
        ax.plot(ok[F.LR].to_numpy(float), ok["_y"].to_numpy(float), linestyle="none", marker="o", color=c,
                alpha=0.6, markersize=4, gid=f"seeds|{arm}", label="_seeds", zorder=4)
        bad = r[r["_div"]]
        if len(bad):
            any_div = True
            ax.plot(bad[F.LR].to_numpy(float), bad["_y"].to_numpy(float), linestyle="none",
                    marker=S.DIVERGED_MARKER, markersize=8, markeredgewidth=2, color=c, gid=f"diverged|{arm}",
                    label="_diverged", zorder=5)
        if sens is not None and arm in sens.index:
            opt, best = float(sens.loc[arm, "optimal_lr"]), float(sens.loc[arm, "best_loss"])
            if np.isfinite(opt) and np.isfinite(best):
                ax.plot([opt], [best], linestyle="none", marker="*", markersize=11, color=c,
                        markeredgecolor="k", gid=f"optimal|{arm}", label="_optimal", zorder=6)
    if all(a in fig.skipped for a in all_arms):
        raise MissingData(f"no settled run has {metric} or loss_at_init")
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{x:g}" for x in lrs])
    ax.minorticks_off()
    ax.set_xlabel(S.LR_LABEL)
    ax.set_ylabel(S.axis_label(metric))
    handles, _ = ax.get_legend_handles_labels()
    if any_div:
        handles.append(Line2D([], [], marker=S.DIVERGED_MARKER, linestyle="none", color="k",
                              markeredgewidth=2, label="diverged (at loss at init)"))
    if sens is not None:
        handles.append(Line2D([], [], marker="*", linestyle="none", color="0.5", markeredgecolor="k",
                              markersize=11, label="optimal LR"))
    fig.legend(handles=handles, loc="outside right upper")
    name = getattr(grid, "name", "runs")
    return finish(fig, f"{name}: LR sensitivity ({metric}, points: seeds, line: seed mean)", ax)


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
def growth_vs_width(table) -> Figure:
    """Growth exponent lambda at init against d_model per init scheme: activations and gradients
    panels, zero line (a good init keeps both near 0 at every width). Points per seed (or run),
    line through the mean per width. `table`: a DataFrame (runs, or the probe `growth_table`
    output) or a GridData (its runs)."""
    df = _growth_frame(table)
    if not len(df) or df[[F.GROWTH_ACT, F.GROWTH_GRAD]].isna().all().all():
        raise MissingData("no growth exponent values")
    inits = list(dict.fromkeys(df[F.INIT]))
    colors = S.arm_colors(inits)
    widths = sorted(df[F.D_MODEL].unique())
    fig, axes = new_figure("growth_vs_width", 1, 2, width=9.0, height=3.8, sharex=True)
    for ax, col in zip(axes[0], (F.GROWTH_ACT, F.GROWTH_GRAD)):
        zero = ax.axhline(0.0, color="0.3", linewidth=0.8, linestyle="--")
        zero.set_gid("zero")
        sub = df.dropna(subset=[col])
        if not len(sub):
            no_data(ax, f"no {col}")
            skip(fig, col, "no values")
        for init in inits:
            g = sub[sub[F.INIT] == init]
            if not len(g):
                continue
            mean = g.groupby(F.D_MODEL)[col].mean()
            ax.plot(mean.index.to_numpy(float), mean.to_numpy(), "-", color=colors[init], label=str(init),
                    gid=f"mean|{init}")
            ax.plot(g[F.D_MODEL].to_numpy(float), g[col].to_numpy(float), linestyle="none", marker="o",
                    color=colors[init], alpha=0.6, markersize=4, gid=f"points|{init}", label="_points")
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [f"{w:g}" for w in widths])
        ax.minorticks_off()
        ax.set_xlabel(S.D_MODEL_LABEL)
        ax.set_ylabel(S.axis_label(col))
    axes[0, 0].set_title("activations")
    axes[0, 1].set_title("gradients")
    axes[0, 1].legend(title="init", loc="best")
    return finish(fig, r"growth exponent $\lambda$ at init vs width")


def _t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean (NaN for fewer than 2 values)."""
    if x.size < 2:
        return float("nan"), float("nan")
    half = sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


_SPIKE_METRICS = ((F.SPIKE_SCORE_LOSS, M.SPIKE_SCORE_LOSS, "loss"),
                  (F.SPIKE_SCORE_GRAD_NORM, M.SPIKE_SCORE_GRAD_NORM, "grad norm"))


def _p_text(row) -> str:
    """The p_holm annotation of one compare row, with its note; just the note (maybe "") without a
    p-value. Too few seeds is not repeated per row: see `_few_seeds_line`."""
    note = row.get("note")
    note = "" if note is None or (isinstance(note, float) and np.isnan(note)) else str(note)
    p = pd.to_numeric(pd.Series([row.get("p_holm")]), errors="coerce").iloc[0]
    if not np.isfinite(p):
        return note
    return f"p_holm={p:.2g}" + (f" ({note})" if note else "")


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
            dropped[f"{what} panel"] = f"{col} is 0 in every run (no spikes)" if zero else f"no {col} value"
    return panels, dropped


@S.styled
def spike_scores_figure(data, compare_df: pd.DataFrame | None = None, *, lr: float | None = None,
                        baseline: str | None = None) -> Figure:
    """Spike scores per arm, a panel each for loss and grad norm (OLMo 2 definition, percent).

    `data` a GridData or runs frame: bars of the seed mean, one point per seed, whiskers the 95%
    Student-t interval of the mean; `compare_df` (compare_arms output) adds p_holm above each
    non-baseline arm. `data` a compare frame itself (it has `mean_diff`): bars of the mean paired
    difference vs the baseline with whiskers [ci_low, ci_high]. Scores are >= 0, so the t-interval
    is clipped at 0. With several LRs one is shown (`reference_lr`). A panel whose score is 0 (or
    missing) in every run is left out and named under the title; with neither panel there is no
    figure (`MissingData`).
    """
    if isinstance(data, pd.DataFrame) and "mean_diff" in data.columns:
        return _spike_diffs(data, baseline)
    runs = runs_of(data)
    baseline = _baseline_of(data, baseline)
    lr = reference_lr(runs, baseline, lr)
    runs = filter_lr(runs, lr)
    arms = arm_order(runs, baseline)
    cols, dropped = _spike_panels(runs)
    if not cols or not arms:
        raise MissingData("; ".join(dropped.values()) or "no runs")
    colors = S.arm_colors(arms, baseline)
    fig, axes = new_figure("spike_scores", 1, len(cols), width=3.2 + 1.0 * len(arms) * len(cols), height=4.0)
    for what, reason in dropped.items():
        skip(fig, what, reason)
    for ax, (col, key, what) in zip(axes[0], cols):
        rows = _compare_rows(compare_df, (col, key))
        for i, arm in enumerate(arms):
            x = runs.loc[runs[F.ARM] == arm, col].astype(float).to_numpy()
            x = x[np.isfinite(x)]
            if not x.size:
                skip(fig, f"{arm} ({what})", f"no {col} values")
                continue
            ax.bar([i], [x.mean()], color=colors[arm], alpha=0.45, width=0.6, gid=f"bar|{arm}")
            jitter = np.linspace(-0.15, 0.15, x.size) if x.size > 1 else np.zeros(1)
            ax.plot(i + jitter, x, linestyle="none", marker="o", color=colors[arm], markeredgecolor="k",
                    markeredgewidth=0.5, markersize=4, gid=f"seeds|{arm}")
            lo, hi = _t_interval(x)
            lo = max(lo, 0.0)  # a score is >= 0
            if np.isfinite(lo):
                ax.vlines([i], lo, hi, color="k", linewidth=1.2, gid=f"ci|{arm}")
            r = rows[rows["arm"] == arm]
            if arm != baseline and len(r) and (text := _p_text(r.iloc[0])):
                top = max(x.max(), hi if np.isfinite(hi) else x.max())
                ax.annotate(text, (i, top), xytext=(0, 4), textcoords="offset points",
                            ha="center", fontsize=7, gid=f"p|{arm}")
        ax.set_xticks(range(len(arms)), [arm_title(a, baseline) for a in arms], rotation=20, ha="right")
        ax.set_xlabel(S.ARM_LABEL)
        ax.set_ylabel(S.axis_label(col))
        ax.set_title(what)
    name = getattr(data, "name", "runs")
    shown = _compare_rows(compare_df, tuple(n for col, key, _ in cols for n in (col, key)))
    return finish(fig, f"{name}: spike scores (bars: seed mean, whiskers: 95% t-interval, clipped at 0)"
                  + (f", lr={lr:g}" if lr is not None else "") + _few_seeds_line(shown))


def _spike_diffs(compare_df: pd.DataFrame, baseline: str | None) -> Figure:
    """Bars of the paired spike-score differences; a panel whose differences are all 0 is left out."""
    panels, dropped = [], {}
    for *names, what in _SPIKE_METRICS:
        rows = _compare_rows(compare_df, tuple(names))
        reason = no_signal(rows["mean_diff"].astype(float)) if len(rows) else "no rows"
        if reason is None:
            panels.append((names, what))
        elif len(rows):
            dropped[f"{what} panel"] = "every paired difference is 0" if reason == "every value is 0" \
                else "no finite paired difference"
    if not panels:
        raise MissingData("the compare frame has no spike-score difference to show"
                          + (f" ({'; '.join(dropped.values())})" if dropped else ""))
    arms = list(dict.fromkeys(compare_df["arm"]))
    colors = S.arm_colors(arms + ([baseline] if baseline else []), baseline)
    fig, axes = new_figure("spike_scores", 1, len(panels), width=3.2 + 1.0 * len(arms) * len(panels),
                           height=4.0)
    for what, reason in dropped.items():
        skip(fig, what, reason)
    for ax, (names, what) in zip(axes[0], panels):
        rows = _compare_rows(compare_df, tuple(names))
        ax.axhline(0.0, color="0.3", linewidth=0.8, gid="zero")
        for i, arm in enumerate(arms):
            r = rows[rows["arm"] == arm]
            if not len(r) or not np.isfinite(float(r["mean_diff"].iloc[0])):
                skip(fig, f"{arm} ({what})", "no paired difference")
                continue
            r = r.iloc[0]
            ax.bar([i], [float(r["mean_diff"])], color=colors[arm], alpha=0.6, width=0.6, gid=f"bar|{arm}")
            lo, hi = float(r["ci_low"]), float(r["ci_high"])
            if np.isfinite(lo) and np.isfinite(hi):
                ax.vlines([i], lo, hi, color="k", linewidth=1.2, gid=f"ci|{arm}")
            if text := _p_text(r):
                ax.annotate(text, (i, max(float(r["mean_diff"]), hi if np.isfinite(hi) else -np.inf)),
                            xytext=(0, 4), textcoords="offset points", ha="center", fontsize=7,
                            gid=f"p|{arm}")
        ax.set_xticks(range(len(arms)), arms, rotation=20, ha="right")
        ax.set_xlabel(S.ARM_LABEL)
        ax.set_ylabel(f"difference in {what} spike score vs {baseline or 'baseline'} (points of %)")
        ax.set_title(what)
    shown = _compare_rows(compare_df, tuple(n for names, _ in panels for n in names))
    return finish(fig, "spike scores: paired difference vs baseline (whiskers: CI)" + _few_seeds_line(shown))


def _forest_rows(compare_df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The compare rows of `metric`, or `MissingData` saying why they make no forest plot."""
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
    return rows


def _forest_keys(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(gid key, tick label) per compare row: the arm, or with several LRs "arm|lr" and "arm, lr=x"
    (one row per arm and LR, none hidden behind another)."""
    lrs = rows["lr"] if "lr" in rows.columns else pd.Series(np.nan, index=rows.index)
    if lrs.nunique(dropna=False) <= 1:
        return [(str(a), str(a)) for a in rows["arm"]]
    return [(f"{a}|{lr_tag(lr)}", f"{a}, lr={lr_tag(lr)}") for a, lr in zip(rows["arm"], lrs)]


@S.styled
def forest_plot(compare_df: pd.DataFrame, metric: str, *, baseline: str | None = None) -> Figure:
    """Paired differences (arm - baseline) of `metric` per arm: the mean difference as a point, the
    CI [ci_low, ci_high] as a whisker, a zero line, and p_holm (or the row's note) and n at the
    right of each row; too few seeds for p-values is said once, under the title. No figure
    (`MissingData`) when no arm has a finite difference or every difference is 0 (`_forest_rows`)."""
    rows = _forest_rows(compare_df, metric)
    if "lr" in rows.columns:  # an arm's LRs next to each other
        rank = {a: i for i, a in enumerate(dict.fromkeys(rows["arm"]))}
        rows = rows.assign(_rank=rows["arm"].map(rank)).sort_values(["_rank", "lr"], kind="stable")
    keys = _forest_keys(rows)
    arms = list(dict.fromkeys(rows["arm"]))
    colors = S.arm_colors(arms + ([baseline] if baseline else []), baseline)
    fig, axes = new_figure(f"forest_{metric}", width=7.0, height=1.4 + 0.45 * len(keys))
    ax = axes[0, 0]
    ax.axvline(0.0, color="0.3", linewidth=0.8, linestyle="--", gid="zero")
    ys = np.arange(len(keys))[::-1]
    for y, (key, label), (_, r) in zip(ys, keys, rows.iterrows()):
        arm = r["arm"]
        d, lo, hi = float(r["mean_diff"]), float(r["ci_low"]), float(r["ci_high"])
        if np.isfinite(lo) and np.isfinite(hi):
            ax.hlines([y], lo, hi, color=colors[arm], linewidth=2.0, gid=f"ci|{key}")
        if np.isfinite(d):
            ax.plot([d], [y], marker="o", color=colors[arm], markeredgecolor="k", linestyle="none",
                    gid=f"diff|{key}")
        else:
            skip(fig, label, "no mean difference")
        n = r.get("n_pairs")
        text = _p_text(r)
        if n is not None and pd.notna(n) and "n=" not in text:
            text = ", ".join(t for t in (text, f"n={int(n)}") if t)
        ax.annotate(text, (1.01, y), xycoords=ax.get_yaxis_transform(), va="center", fontsize=7,
                    annotation_clip=False, gid=f"annot|{key}")
    ax.set_yticks(ys, [label for _, label in keys])
    ax.set_ylim(-0.7, len(keys) - 0.3)
    ax.set_ylabel(S.ARM_LABEL)
    ax.set_xlabel(f"paired difference in {metric} (arm - {baseline or 'baseline'})")
    return finish(fig, f"{metric}: paired difference vs {baseline or 'baseline'} (whiskers: CI)"
                  + _few_seeds_line(rows), ax)
