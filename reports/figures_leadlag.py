"""What came before the loss spikes: event-aligned averages of the lead-lag signals
(`reports.leadlag`), one panel per signal family, one line per arm.

Every signal is in robust sigmas from its own median over the points before the lead window (the
onset rule's baseline), positive on its departure side (a drop of the update-gradient cosine is
drawn upward), so signals on different scales share an axis; a per-layer signal is its layer
furthest out at each step. A family of two signals draws the second dashed. The loss spike is the
vertical line at 0, the onset threshold the dotted horizontal one. The axis turns symmetric-log
when the means reach ten times the threshold, so the small rises before a spike stay visible next
to the spike itself. Artist gids: `mean|arm|signal`, `spike_line`, `threshold`.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator

from reports import frames as F
from reports import leadlag as L
from reports import style as S
from reports.figures_common import (
    MissingData,
    arm_title,
    colors_of,
    figure_legend,
    finish,
    outer_labels,
    panel_figure,
    skip,
    tick_text,
)
from reports.figures_summary import symlog_ticks
from stability import metric_names as M

OFFSET_LABEL = "Steps from the loss spike"
EXCURSION_LABEL = "Excursion (robust σ)"
# the short name of a signal inside its family's panel title
PART: dict[str, str] = {
    M.UPDATE_RMS: "RMS", M.UPDATE_GRAD_COS: "cosine drop",
    M.LOGITS_LOG_Z_MEAN: "mean", M.LOGITS_LOG_Z_MAX: "max",
    M.ACT_ATTN_OUT_RMS: "attention", M.ACT_MLP_OUT_RMS: "MLP",
}
FAMILY_TITLE: dict[str, str] = {"Sublayer outputs": "Sublayer output RMS"}
DASHES = ("-", "--")
PANEL_CHARS = {"single": 20, "double": 40}  # title characters per line over one panel


def panel_title(family: str, keys: list[str], width: str) -> str:
    """"Adam update: RMS; cosine drop (dashed)"; the family alone for a family of
    one signal, the signal's name when it is the only one of its family drawn."""
    members = [s.key for s in L.SIGNALS if s.family == family]
    title = FAMILY_TITLE.get(family, family)
    if len(keys) == 1 and len(members) > 1:
        name = L.name_of(keys[0])
        title = name[:1].upper() + name[1:]
    elif len(keys) > 1:
        parts = [PART.get(k, L.name_of(k)) for k in keys]
        title += ": " + "; ".join(parts[:1] + [f"{p} (dashed)" for p in parts[1:]])
    return textwrap.fill(title, PANEL_CHARS[width])


def spikes_text(n: int) -> str:
    """"1 loss spike", "4 loss spikes"."""
    return f"{n} loss spike{'' if n == 1 else 's'}"


def _families(means: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(family, its signal keys with data) in `leadlag.SIGNALS` order."""
    have = set(means["signal"])
    out = []
    for family in L.FAMILIES:
        keys = [s.key for s in L.SIGNALS if s.family == family and s.key in have]
        if keys:
            out.append((family, keys))
    return out


def _symlog(ax: Axes, values: np.ndarray, z: float, fig: Figure) -> None:
    """A symmetric-log y axis, linear within +-z, when |values| reach 10 z."""
    x = np.abs(values[np.isfinite(values)])
    if not x.size or x.max() < 10 * z:
        return
    ax.set_yscale("symlog", linthresh=z, linscale=1.0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: tick_text(v)))
    lo, hi = ax.get_ylim()
    max_ticks = 5 if getattr(fig, "width_name", "double") == "single" else 7
    ax.set_yticks(symlog_ticks(lo, hi, z, max_ticks))
    ax.yaxis.set_minor_locator(NullLocator())


def _draw_family(ax: Axes, means: pd.DataFrame, keys: list[str], arms: list[str],
                 colors: dict[str, str]) -> np.ndarray:
    """Every arm's mean of each signal of the family on `ax`; returns the values drawn."""
    drawn = []
    for arm in arms:
        for key, dash in zip(keys, DASHES):
            m = means[(means[F.ARM] == arm) & (means["signal"] == key)].sort_values("offset")
            if not len(m):
                continue
            x, y = m["offset"].to_numpy(dtype=float), m["mean"].to_numpy(dtype=float)
            sparse = dict(marker="o", markersize=2.2) if len(x) <= 12 else {}
            ax.plot(x, y, color=colors[arm], linestyle=dash, gid=f"mean|{arm}|{key}", label="_mean", **sparse)
            drawn.append(y)
    return np.concatenate(drawn) if drawn else np.zeros(0)


@S.styled
def leadlag_figure(grid: F.GridData, lead: L.LeadLag | None = None, means: pd.DataFrame | None = None, *,
                   width: str = "double", colors: dict[str, str] | None = None) -> Figure:
    """Event-aligned means around the loss spikes per arm (`leadlag.aligned_means` of
    `leadlag.grid_event_aligned`), a panel per signal family present. `lead`: the grid's
    `leadlag.grid_leadlag` (computed when None), `means` its aligned means (likewise).
    `MissingData` when no loss spike could be analysed."""
    lead = lead if lead is not None else L.grid_leadlag(grid)
    analysed = lead.spikes[lead.spikes["status"] == L.ANALYSED] if len(lead.spikes) else lead.spikes
    if not len(analysed):
        raise MissingData(f"no loss spike with a baseline in grid {grid.name!r}")
    if means is None:
        means = L.aligned_means(L.grid_event_aligned(grid, lead))
    if not len(means):
        raise MissingData(f"no lead-lag signal around the loss spikes of grid {grid.name!r}")
    families = _families(means)
    n_spikes = analysed.groupby(F.ARM).size().to_dict()  # every arm drawn has analysed spikes
    arms = [a for a in grid.arms if a in set(means[F.ARM])]
    colors = colors_of(grid.arms, grid.baseline, colors)
    fig, panels = panel_figure("leadlag", len(families), width=width, sharex=True)
    logged = set().union(*(lead.logged.get(r, set()) for r in set(analysed[F.RUN_ID])))
    for sig in L.SIGNALS:
        if sig.key in logged and sig.key not in set(means["signal"]):
            skip(fig, sig.name, "no sample with a baseline around a loss spike")
    for ax, (family, keys) in zip(panels, families):
        values = _draw_family(ax, means, keys, arms, colors)
        ax.axvline(0.0, color="0.3", linewidth=0.8, gid="spike_line")
        ax.axhline(lead.z, color="0.45", linewidth=0.7, linestyle=":", gid="threshold")
        _symlog(ax, values, lead.z, fig)
        ax.set_title(panel_title(family, keys, width))
    outer_labels(panels, OFFSET_LABEL, EXCURSION_LABEL)
    labels = {a: f"{arm_title(a, grid.baseline)}, {spikes_text(n_spikes[a])}" for a in arms}
    handles = [Line2D([], [], color=colors[a], label=labels[a]) for a in arms]
    handles += [Line2D([], [], color="0.3", linewidth=0.8, label="loss spike"),
                Line2D([], [], color="0.45", linewidth=0.7, linestyle=":",
                       label=f"onset threshold ({lead.z:g} σ)")]
    figure_legend(fig, handles)
    return finish(fig, f"{S.plain(grid.name)}: what came before the loss spikes\n"
                       f"mean over loss spikes, in robust σ from each signal's median over the "
                       f"{lead.baseline} points before the {lead.horizon}-step window, departure side up; "
                       f"per-layer signals: the layer furthest out")
