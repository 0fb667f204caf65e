"""One look for every report figure: sizes, rc settings, arm colours, and human-readable labels.

- Sizes: a figure is `width="single"` (3.5 in, one column of a two-column paper) or `"double"`
  (7.2 in, the full text width); saved as a vector PDF and a 300-dpi PNG (`DPI`), at exactly that
  width (no tight bounding box, so the PNG is 1050 or 2160 pixels wide and drops into LaTeX at
  100%). Panels wrap into a grid of at most `MAX_COLUMNS[width]` columns.
- `style()` is a context manager applying `RC` (8 pt text, light grid, embedded TrueType fonts in
  the PDF) for the body only, so the global rcParams are never changed; `styled` decorates.
- Colours: `arm_colors(arms, baseline)` gives the baseline black and the other arms the
  Okabe-Ito colours in the order given (a grid's arm order), then Paul Tol's muted set: all
  colour-blind safe. A report computes it once from the grid and hands the same mapping to every
  figure, so an arm has one colour everywhere. Heatmaps use `HEATMAP_CMAP` (cividis, made for
  colour-vision deficiency), per-layer lines `LAYER_CMAP` (viridis).
- Labels: `axis_label(key)` ("Gradient L2 norm", "Training loss (CE, nats)") and `metric_name(key)`
  (the same without the unit) for a metric key, a per-layer key or a runs-frame column; unknown
  metric keys fall back on their `stability.metric_names.REGISTRY` description, never the raw key.
  `humanize(text)` replaces every raw key inside a sentence (a skip reason, a note).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import matplotlib as mpl
import numpy as np
from cycler import cycler

from reports import frames as F
from stability import metric_names as M

# ------------------------------------------------------------------------------------ sizes

WIDTHS: dict[str, float] = {"single": 3.5, "double": 7.2}  # inches
MAX_COLUMNS: dict[str, int] = {"single": 2, "double": 3}  # panels per row
PANEL_HEIGHT: dict[str, float] = {"single": 1.9, "double": 2.2}  # inches per row of panels
DPI = 300
# characters per title line at 8 pt over the figure's width
TITLE_CHARS: dict[str, int] = {"single": 52, "double": 110}
TITLE_LINES = 3  # title lines a figure's height allows for; each one more adds TITLE_LINE_IN
TITLE_LINE_IN = 8.5 * 1.25 / 72  # one line of figure.titlesize, in inches

# ---------------------------------------------------------------------------------- colours

BASELINE_COLOR = "#000000"
# Okabe & Ito (2008) without black (the baseline's); yellow last, it is faint on white.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#F0E442")
# Paul Tol's "muted" scheme, for grids of more than len(PALETTE) arms besides the baseline.
PALETTE_EXTRA = ("#332288", "#88CCEE", "#117733", "#999933", "#882255", "#44AA99", "#DDCC77", "#AA4499")
SPIKE_COLOR = "#D55E00"
MARKER_EDGE = "#000000"
DIVERGED_MARKER = "x"
SPIKE_MARKER = "^"
REWIND_MARKER = "v"  # a spike training went back from, at its value before the rewind
OPTIMUM_MARKER = "*"
LAYER_CMAP = "viridis"
HEATMAP_CMAP = "cividis"
RAW_ALPHA = 0.28  # the faint raw series under a smoothed one
BAND_ALPHA = 0.18  # the seed band

RC: dict[str, object] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "figure.titlesize": 8.5,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=list(PALETTE)),
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "legend.frameon": False,
    "image.cmap": LAYER_CMAP,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "standard",  # keep the exact column width
    "pdf.fonttype": 42,  # TrueType, so the text in a PDF stays text (editable, searchable)
    "ps.fonttype": 42,
    "svg.fonttype": "none",
}

# ----------------------------------------------------------------------------------- labels

STEP_LABEL = "Step"
LR_LABEL = "Peak learning rate"
LAYER_LABEL = "Layer"
ARM_LABEL = "Arm"
D_MODEL_LABEL = r"Model width $d_\mathrm{model}$"
NATS = "nats"

# key -> (name, unit); axis_label is "name (unit)"
_NAMES: dict[str, tuple[str, str]] = {
    "step": (STEP_LABEL, ""),
    "layer": (LAYER_LABEL, ""),
    M.TRAIN_LOSS: ("Training loss", "CE + z-loss, nats"),
    M.TRAIN_CE_LOSS: ("Training loss", "CE, nats"),
    M.TRAIN_Z_LOSS: ("z-loss", "scaled, nats"),
    M.EVAL_LOSS: ("Eval loss", "CE, nats"),
    M.GRAD_NORM: ("Gradient L2 norm", ""),
    M.GRAD_NORM_EMBED: ("Embedding gradient L2 norm", ""),
    M.PARAM_NORM_EMBED: ("Embedding L2 norm", ""),
    M.PARAM_NORM: ("Parameter L2 norm", ""),
    M.LOGITS_LOG_Z_MEAN: ("Mean log Z", NATS),
    M.LOGITS_LOG_Z_MAX: ("Max log Z", NATS),
    M.ATTN_LOGIT_MAX: ("Max attention logit", ""),
    M.UPDATE_RMS: ("Adam update RMS", ""),
    M.OPTIM_EPS_REGIME: ("Eps-regime share", r"$\sqrt{\hat v}<\epsilon$"),
    M.ACT_RMS: ("Residual-stream RMS", ""),
    M.TRAIN_LR: ("Learning rate", ""),
    M.SPIKE_SCORE_LOSS: ("Loss spike score", "%"),
    M.SPIKE_SCORE_GRAD_NORM: ("Grad-norm spike score", "%"),
    M.INIT_GROWTH_ACT: (r"Growth exponent $\lambda$, activations", ""),
    M.INIT_GROWTH_GRAD: (r"Growth exponent $\lambda$, gradients", ""),
    F.LR: (LR_LABEL, ""),
    F.SEED: ("Seed", ""),
    F.FINAL_EVAL_LOSS: ("Final eval loss", "CE, nats"),
    F.BEST_EVAL_LOSS: ("Best eval loss", "CE, nats"),
    F.FINAL_TRAIN_LOSS: ("Final training loss", NATS),
    F.LOSS_AT_INIT: ("Loss at init", NATS),
    F.MAX_GRAD_NORM: ("Max gradient L2 norm", ""),
    F.MAX_ATTN_LOGIT: ("Max attention logit", ""),
    F.FINAL_LOG_Z: ("Final mean log Z", NATS),
    F.SPIKE_SCORE_LOSS: ("Loss spike score", "%"),
    F.SPIKE_SCORE_GRAD_NORM: ("Grad-norm spike score", "%"),
    F.N_SPIKES: ("Spike events", "count"),
    F.GROWTH_ACT: (r"Growth exponent $\lambda$, activations", ""),
    F.GROWTH_GRAD: (r"Growth exponent $\lambda$, gradients", ""),
    F.D_MODEL: (D_MODEL_LABEL, ""),
    F.DIVERGED_AT_STEP: ("Step of divergence", ""),
    F.LAST_STEP: ("Last step", ""),
    "lambda_act": (r"Growth exponent $\lambda$, activations", ""),
    "lambda_grad": (r"Growth exponent $\lambda$, gradients", ""),
}
# How raw keys look inside a sentence: a metric key (`grad/norm`, `grad/norm/layer_3`, `x@olmo2`)
# or a runs-frame column with an underscore (`final_eval_loss`).
KEY_PATTERN = re.compile(r"(?<![\w/\\])[a-z][a-z0-9_]*(?:/[A-Za-z0-9_]+)+(?:@\w+)?")
_LAYER = re.compile(r"^(?P<base>.+)/layer_(?P<layer>\d+)$")
COLUMN_NAMES = tuple(sorted({c for c in F.RUN_COLUMNS if "_" in c} | {"lambda_act", "lambda_grad"},
                            key=len, reverse=True))
_COLUMN_PATTERN = re.compile(r"\b(" + "|".join(map(re.escape, COLUMN_NAMES)) + r")\b")


def _declared_name(key: str) -> str | None:
    """A name from the metric registry's description: its first clause, capitalised."""
    found = M.REGISTRY.declared(key) or next((m for m in M.REGISTRY if m.key == key), None)
    if found is None:
        return None
    what = re.split(r"[;(]", found.what)[0].strip().rstrip(",")
    return what[:1].upper() + what[1:]


def _lookup(key: str) -> tuple[str, str]:
    """(name, unit) of a metric key, per-layer key or runs column; a plain-words fallback."""
    key = str(key).split("@")[0]
    if key in _NAMES:
        return _NAMES[key]
    layer = _LAYER.match(key)
    if layer:
        name, unit = _lookup(layer["base"])
        return f"{name}, layer {layer['layer']}", unit
    declared = _declared_name(key)
    if declared:
        return declared, ""
    words = re.sub(r"[/_]+", " ", key).strip()
    return (words[:1].upper() + words[1:]) or "value", ""


def metric_name(key: str) -> str:
    """The human name of a metric key or runs column, without unit ("Gradient L2 norm")."""
    return _lookup(key)[0]


def unit_of(key: str) -> str:
    """The unit of a metric key or runs column ("CE, nats", "%"), "" when it has none."""
    return _lookup(key)[1]


def axis_label(key: str) -> str:
    """The axis label of a metric key or runs column, with its unit ("Training loss (CE, nats)")."""
    name, unit = _lookup(key)
    return f"{name} ({unit})" if unit else name


def lower_first(text: str) -> str:
    """`text` with its first letter lower-cased, for use inside a sentence (keeps "L2", "Adam")."""
    first = text.split(" ", 1)[0]
    keep = first.isupper() or first in ("Adam", "AdamW") or any(c.isdigit() for c in first)
    return text if keep or not text else text[:1].lower() + text[1:]


def humanize(text: str) -> str:
    """`text` with every raw metric key and runs column name replaced by its human name."""
    text = KEY_PATTERN.sub(lambda m: lower_first(metric_name(m.group())), str(text))
    return _COLUMN_PATTERN.sub(lambda m: lower_first(metric_name(m.group())), text)


def plain(text: str) -> str:
    """A user string (arm or grid name) shown literally: "$" would start mathtext."""
    return str(text).replace("$", r"\$")


# ------------------------------------------------------------------------------ rc and colours

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


def check_width(width: str) -> str:
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {sorted(WIDTHS)}, got {width!r}")
    return width


def arm_colors(arms: Iterable[str], baseline: str | None = None) -> dict[str, str]:
    """A colour per arm: the baseline `BASELINE_COLOR`, the others `PALETTE` then `PALETTE_EXTRA`
    in the order given (colours repeat beyond 15 arms).

    The order is the caller's, so pass the grid's arms (`GridData.arms`) and hand the result to
    every figure: an arm then has one colour in every figure of a report, the first arm after the
    baseline is orange, the next sky blue, and so on.
    """
    names = list(dict.fromkeys(a for a in arms if a is not None))
    colours = PALETTE + PALETTE_EXTRA
    others = [n for n in names if n != baseline]
    out = {name: colours[i % len(colours)] for i, name in enumerate(others)}
    if baseline is not None and baseline in names:
        out[baseline] = BASELINE_COLOR
    return {n: out[n] for n in names}


def layer_colors(n_layers: int) -> list[tuple[float, float, float, float]]:
    """`n_layers` colours along `LAYER_CMAP` (layer 0 dark, the last layer light)."""
    cmap = mpl.colormaps[LAYER_CMAP]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n_layers, 1))][:n_layers]
