"""The findings at a glance: one row per finding, the paired difference relative to the
baseline's mean with its CI, coloured by whether it points the paper's way."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from reports import style as S
from reports.figures_common import figure_legend, finish, new_figure

COLORS = {"yes": "#0072B2", "no": "#D55E00", "n.s.": "#999999"}  # Okabe-Ito blue, vermillion, grey


WANT = {"+": "expected higher", "-": "expected lower"}


def _percent(x: float, _pos: int) -> str:
    if not x:
        return "0"
    return f"{x:+.0f}%" if abs(x) < 1e4 else f"{'+' if x > 0 else '-'}1e{int(round(np.log10(abs(x))))}%"


def _kind(verdict: str) -> str:
    return "n.s." if "n.s." in verdict or verdict == "no difference" else verdict


@S.styled
def findings_figure(table: pd.DataFrame, titles: dict[str, str], *, width: str = "double") -> Figure:
    """(arm - baseline) / |baseline mean| in percent, with the CI scaled alike, per finding;
    symmetric-log axis, since relative changes here span from under 1% to several hundred."""
    rows = table[np.isfinite(table["mean_diff"].astype(float))].reset_index(drop=True)
    n = max(1, len(rows))
    per_row = 0.2 if width == "double" else 0.3  # single width: labels wrap onto more lines
    fig, axes = new_figure("findings", width=width, height=1.5 + per_row * n)
    ax = axes[0, 0]
    scale = rows["base_mean"].abs().replace(0, np.nan).astype(float)
    rel = (100 * rows["mean_diff"].astype(float) / scale).where(rows["mean_diff"] != 0, 0.0)
    low, high = 100 * rows["ci_low"].astype(float) / scale, 100 * rows["ci_high"].astype(float) / scale
    y = np.arange(len(rows))[::-1]
    size = 5.5 if width == "double" else 4.5
    for yi, r, m, lo, hi in zip(y, rows.itertuples(), rel, low, high):
        color = COLORS[_kind(r.verdict)]
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [yi, yi], color=color, linewidth=1.2)
        if np.isfinite(m):
            ax.plot([m], [yi], marker="o", color=color, markersize=4)
        else:  # a baseline of 0 has no relative change: say the absolute one in the row
            ax.text(0.99, yi, f"baseline 0, arm {r.arm_mean:+.3g}", transform=ax.get_yaxis_transform(),
                    ha="right", va="center", color=color, fontsize=size)
    ax.axvline(0.0, color="0.3", linewidth=0.7, linestyle="--")
    ax.set_xscale("symlog", linthresh=1.0)
    finite = np.abs(np.concatenate([v[np.isfinite(v)] for v in (rel, low, high)] + [np.ones(1)]))
    top = int(np.ceil(np.log10(finite.max())))
    step = max(1, -(-top // (3 if width == "single" else 5)))  # at most 3 or 5 decades a side
    decades = [10.0 ** k for k in range(0, top + 1, step)]
    ax.xaxis.set_major_locator(FixedLocator([-d for d in decades[::-1]] + [0.0] + decades))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    labels = [f"{titles.get(r.study, r.study)}: {r.measure} ({r.arm}"
              f"{'' if not np.isfinite(r.lr) else f', lr {r.lr:g}'}), {WANT[r.expected]}"
              for r in rows.astype({"lr": float}).itertuples()]
    wrap = 70 if width == "double" else 34
    labels = ["\n".join(textwrap.wrap(t, wrap)) for t in labels]
    ax.set_yticks(y, labels, fontsize=size)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("Arm minus baseline, % of the baseline mean (95% CI)" if width == "double"
                  else "Arm - baseline, % of baseline (95% CI)")
    if width == "single":
        ax.tick_params(axis="x", labelsize=5)
    handles = [Line2D([], [], color=COLORS["yes"], marker="o", label="as expected (Holm p < 0.05)"),
               Line2D([], [], color=COLORS["no"], marker="o", label="the other way (Holm p < 0.05)"),
               Line2D([], [], color=COLORS["n.s."], marker="o", label="not significant, or no difference")]
    figure_legend(fig, handles)
    return finish(fig, "OLMo 2 stability findings at CPU scale: each intervention undone, paired on seeds")
