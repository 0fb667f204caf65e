"""One look for every report figure: rc settings, stable arm colours, axis labels with units.

- `style()` is a context manager applying `RC` (font sizes, light grid, colour cycle); figure
  functions wrap their body in it (or use the `styled` decorator) so the global rcParams are never
  changed.
- `arm_colors(arms, baseline)` gives every arm a colour derived from its name (crc32 into
  `PALETTE`, collisions within one set of arms resolved by probing in name order), so an arm keeps
  its colour in every figure of a grid; the baseline is always `BASELINE_COLOR` (near black).
- `axis_label(key)` is the labelled axis (with units) for a metric key, run column or "step".
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import matplotlib as mpl
import numpy as np
from cycler import cycler

from reports import frames as F
from stability import metric_names as M

BASELINE_COLOR = "#1a1a1a"
# tab10 without its grey: arms hash into these while a grid has at most 9 non-baseline arms.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf")
# Larger grids hash into PALETTE plus these darker tab20b colours.
PALETTE_EXTRA = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
SPIKE_COLOR = "#d62728"
DIVERGED_MARKER = "x"
SPIKE_MARKER = "^"
LINESTYLES = ("-", "--", ":", "-.")
LAYER_CMAP = "viridis"
HEATMAP_CMAP = "magma"

RC: dict[str, object] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.titlesize": 11,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=list(PALETTE)),
    "lines.linewidth": 1.3,
    "lines.markersize": 5,
    "legend.frameon": False,
    "image.cmap": LAYER_CMAP,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
}

STEP_LABEL = "step"
LR_LABEL = "peak learning rate"
LAYER_LABEL = "layer"
ARM_LABEL = "arm"
D_MODEL_LABEL = "d_model (model width)"

LABELS: dict[str, str] = {
    "step": STEP_LABEL,
    M.TRAIN_LOSS: "train loss (nats/token)",
    M.TRAIN_CE_LOSS: "train cross-entropy (nats/token)",
    M.EVAL_LOSS: "eval loss (nats/token)",
    M.GRAD_NORM: "grad L2 norm",
    M.PARAM_NORM_EMBED: "embedding L2 norm",
    M.PARAM_NORM: "parameter L2 norm",
    M.LOGITS_LOG_Z_MEAN: r"mean $\log Z$ (log-sum-exp of logits, nats)",
    M.LOGITS_LOG_Z_MAX: r"max $\log Z$ (log-sum-exp of logits, nats)",
    M.ATTN_LOGIT_MAX: r"max attention logit $\langle q,k\rangle/\sqrt{d_\mathrm{head}}$",
    M.UPDATE_RMS: r"update RMS of $\hat m/(\sqrt{\hat v}+\epsilon)$",
    M.OPTIM_EPS_REGIME: r"share of entries with $\sqrt{\hat v}<\epsilon$",
    M.TRAIN_LR: "learning rate",
    F.LR: LR_LABEL,
    F.FINAL_EVAL_LOSS: "final eval loss (nats/token)",
    F.BEST_EVAL_LOSS: "best eval loss (nats/token)",
    F.FINAL_TRAIN_LOSS: "final train loss (nats/token)",
    F.SPIKE_SCORE_LOSS: r"loss spike score (% of points $\geq 7\sigma$)",
    F.SPIKE_SCORE_GRAD_NORM: r"grad-norm spike score (% of points $\geq 7\sigma$)",
    M.SPIKE_SCORE_LOSS: r"loss spike score (% of points $\geq 7\sigma$)",
    M.SPIKE_SCORE_GRAD_NORM: r"grad-norm spike score (% of points $\geq 7\sigma$)",
    F.GROWTH_ACT: r"growth exponent $\lambda$, activations",
    F.GROWTH_GRAD: r"growth exponent $\lambda$, gradients",
    F.D_MODEL: D_MODEL_LABEL,
    F.MAX_GRAD_NORM: "max grad L2 norm",
    F.MAX_ATTN_LOGIT: r"max attention logit $\langle q,k\rangle/\sqrt{d_\mathrm{head}}$",
    F.FINAL_LOG_Z: r"final mean $\log Z$ (nats)",
    "layer": LAYER_LABEL,
}


def axis_label(key: str) -> str:
    """The axis label (with units) for a metric key or run column; the key itself when unknown."""
    return LABELS.get(key, key)


@contextmanager
def style():
    """Apply `RC` for the body only (figure functions create and fill their figure inside)."""
    with mpl.rc_context(RC):
        yield


def styled(fn: Callable) -> Callable:
    """Decorator: run `fn` under `style()`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)

    return wrapper


def arm_colors(arms: Iterable[str], baseline: str | None = None) -> dict[str, str]:
    """A colour per arm, derived from its name; the baseline gets `BASELINE_COLOR`.

    The preferred slot is crc32(name) mod the palette size (`PALETTE`, or `PALETTE` +
    `PALETTE_EXTRA` for more than len(PALETTE) arms); arms are placed in name order and move to the
    next free slot on a collision, so the result depends only on the set of arms (never on their
    order) and every figure of one grid agrees. Beyond the palette size colours repeat.
    """
    names = list(dict.fromkeys(a for a in arms if a is not None))
    others = sorted((n for n in names if n != baseline), key=str)
    palette = PALETTE if len(others) <= len(PALETTE) else PALETTE + PALETTE_EXTRA
    out: dict[str, str] = {}
    used: set[int] = set()
    for name in others:
        slot = zlib.crc32(str(name).encode()) % len(palette)
        if len(used) < len(palette):
            while slot in used:
                slot = (slot + 1) % len(palette)
        used.add(slot)
        out[name] = palette[slot]
    if baseline is not None and baseline in names:
        out[baseline] = BASELINE_COLOR
    return {n: out[n] for n in names}


def layer_colors(n_layers: int) -> list[tuple[float, float, float, float]]:
    """`n_layers` colours along `LAYER_CMAP` (layer 0 dark, last layer light)."""
    cmap = mpl.colormaps[LAYER_CMAP]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n_layers, 1))][:n_layers]


def lr_linestyles(lrs: Iterable[float]) -> dict[float, str]:
    """A line style per learning rate, in increasing LR order."""
    ordered = sorted(set(float(x) for x in lrs))
    return {lr: LINESTYLES[i % len(LINESTYLES)] for i, lr in enumerate(ordered)}
