"""The report's matplotlib figures (OLMo 2 section 3 in kind), each a function of a `GridData` or a
frame returning a `matplotlib.figure.Figure`, plus `save_figure` and `report_figures`.

Figures never touch pyplot: each is a `Figure` on its own Agg canvas, styled by `reports.style`:
human-readable labels with units (never a raw metric key), one colour per arm (Okabe-Ito, the
baseline black) in every figure of a report, log axes where values span decades, one legend per
figure below its panels, and a `width="single"` (3.5 in) or `"double"` (7.2 in) size for a paper's
column or text width. `save_figure` writes a vector PDF and a 300-dpi PNG of exactly that width.

A figure function raises `MissingData` (a ValueError) when the grid lacks what it needs, or when
all it would draw is NaN or 0 (no spike anywhere, every paired difference 0, no run diverged):
an empty figure reads like a result. Arms or panels without data are left out and listed in
`fig.skipped` ({what: reason}) and under the title.

- over steps (`reports.figures_curves`): `loss_curves`, `grad_norm_curves`, `log_z_curves`,
  `embedding_norm_curves`, `metric_curves`, `attn_logit_curves` (per arm), `attn_logit_layers`
  (per layer, a panel per arm), `update_rms_and_eps` (the AdamW eps study), `layer_grad_heatmap`;
- summaries (`reports.figures_summary`): `lr_sensitivity_figure`, `growth_vs_width`,
  `spike_scores_figure`, `forest_plot`, `forest_panels` (statistics come in as `compare_arms` /
  `lr_sensitivity` frames, never computed here);
- around the loss spikes (`reports.figures_leadlag`): `leadlag_figure`, drawn by the report's
  lead-lag section (which says in one line when there is no loss spike), not by `report_figures`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports import frames as F
from reports import style as S
from reports.figures_common import MissingData, log
from reports.figures_curves import (
    attn_logit_curves,
    attn_logit_layers,
    embedding_norm_curves,
    grad_norm_curves,
    layer_grad_heatmap,
    log_z_curves,
    loss_curves,
    metric_curves,
    update_rms_and_eps,
)
from reports.figures_leadlag import leadlag_figure
from reports.figures_summary import (
    forest_panels,
    forest_plot,
    growth_vs_width,
    lr_sensitivity_figure,
    spike_scores_figure,
)
from stability import metric_names as M

__all__ = [
    "HEADLINE_FOREST", "MissingData", "attn_logit_curves", "attn_logit_layers", "embedding_norm_curves",
    "forest_panels", "forest_plot", "grad_norm_curves", "growth_vs_width", "layer_grad_heatmap",
    "leadlag_figure", "log_z_curves", "loss_curves", "lr_sensitivity_figure", "metric_curves",
    "report_figures", "save_figure", "spike_scores_figure", "update_rms_and_eps",
]

FORMATS = ("png", "pdf")
DPI = S.DPI
WIDTHS = ("double", "single")  # what a report writes: figures/ and figures/single/
SUBFOLDER = {"double": "", "single": "single"}
# The forest panels of the headline figure (the report's headline metrics, in its order).
HEADLINE_FOREST = (F.FINAL_EVAL_LOSS, F.SPIKE_SCORE_GRAD_NORM, F.MAX_GRAD_NORM, F.MAX_ATTN_LOGIT)
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}


def safe_name(name: str) -> str:
    """A file stem from `name`: runs of characters outside [A-Za-z0-9._-] become "_"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "figure"


def save_figure(fig: Figure, out_dir: str | os.PathLike, name: str,
                formats: tuple[str, ...] = FORMATS, dpi: int = DPI) -> list[Path]:
    """Write `fig` as out_dir/name.png (300 dpi) and name.pdf (vector); returns the paths.

    Both at the figure's own size (no tight bounding box): a "double" figure is 7.2 in, 2160 px
    wide, a "single" one 3.5 in, 1050 px, ready to place at 100% in a paper. No timestamps in the
    metadata, so the same figure gives the same bytes.

    Each file is written to a temporary file in `out_dir` and moved into place with os.replace,
    so a reader never sees a half-written figure. `name` is made file-safe (`safe_name`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(name)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{fmt}.tmp", dir=out)
        try:
            with os.fdopen(fd, "wb") as fh, S.style():
                fig.savefig(fh, format=fmt, dpi=dpi, metadata=_METADATA.get(fmt))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def _spikiness(runs: pd.DataFrame) -> pd.DataFrame:
    """(score, count) per run: grad-norm spike score and spike count, NaN as -inf."""
    return pd.DataFrame({"score": runs[F.SPIKE_SCORE_GRAD_NORM].astype(float).fillna(-np.inf),
                         "count": runs[F.N_SPIKES].astype(float).fillna(-np.inf)}, index=runs.index)


def _worst_run(runs: pd.DataFrame) -> str | None:
    """The run id with the highest grad-norm spike score (ties: most spikes, then first)."""
    if not len(runs):
        return None
    order = _spikiness(runs).sort_values(["score", "count"], ascending=False, kind="stable")
    return str(runs.loc[order.index[0], F.RUN_ID])


def _worst_arm(runs: pd.DataFrame) -> str:
    """The arm with the highest mean grad-norm spike score (then mean spike count; ties: first)."""
    k = _spikiness(runs).replace(-np.inf, np.nan).assign(arm=runs[F.ARM])
    per_arm = k.groupby("arm", sort=False)[["score", "count"]].mean().fillna(-np.inf)
    return str(per_arm.sort_values(["score", "count"], ascending=False, kind="stable").index[0])


Job = tuple[str, Callable[[str], Figure]]  # (file stem, width -> figure)


def _heatmap_jobs(grid: F.GridData, skipped: dict[str, str]) -> list[Job]:
    """Heatmaps of the worst-spiking run of the baseline and of the worst-spiking arm."""
    d = grid.dense
    have = set(d.loc[(d["key"] == M.GRAD_NORM) & (d["head"] == -1), F.RUN_ID]) if len(d) else set()
    if not have:
        skipped["layer_grad_heatmap"] = f"no dense {M.GRAD_NORM} rows"
        return []
    runs = grid.runs[grid.runs[F.RUN_ID].isin(have)]
    picks: list[tuple[str, str]] = []
    if grid.baseline is None:
        skipped["layer_grad_heatmap_baseline"] = "grid has no baseline arm"
    else:
        rid = _worst_run(runs[runs[F.ARM] == grid.baseline])
        if rid is None:
            skipped["layer_grad_heatmap_baseline"] = f"no baseline run with dense {M.GRAD_NORM}"
        else:
            picks.append(("baseline", rid))
    others = runs[runs[F.ARM] != grid.baseline]
    if not len(others):
        skipped["layer_grad_heatmap_worst_arm"] = f"no non-baseline run with dense {M.GRAD_NORM}"
    else:
        worst = _worst_arm(others)
        picks.append((f"worst_arm_{worst}", _worst_run(others[others[F.ARM] == worst])))
    return [(f"layer_grad_heatmap_{tag}", lambda w, rid=rid: layer_grad_heatmap(grid, rid, width=w))
            for tag, rid in picks]


def _growth_job(source, label: str, skipped: dict[str, str]) -> list[Job]:
    df = source.runs if isinstance(source, F.GridData) else source
    cols = [c for c in (F.GROWTH_ACT, F.GROWTH_GRAD, "lambda_act", "lambda_grad") if c in df.columns]
    if F.D_MODEL not in df.columns or not cols:
        skipped[label] = "no growth exponent or d_model columns"
        return []
    has = df[cols].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)
    widths = pd.to_numeric(df.loc[has, F.D_MODEL], errors="coerce").dropna().unique()
    if len(widths) < 2:
        skipped[label] = f"growth exponents for {len(widths)} width(s), need >= 2"
        return []
    return [(label, lambda w: growth_vs_width(df, width=w))]


def _forest_jobs(grid: F.GridData, compare_df: pd.DataFrame | None, colors: dict[str, str],
                 skipped: dict[str, str]) -> list[Job]:
    """One forest plot per compared metric, and the headline metrics' panels in one figure."""
    if compare_df is None or not len(compare_df):
        skipped["forest"] = "no compare_df (paired statistics) given"
        return []
    base = grid.baseline
    jobs: list[Job] = [(f"forest_{safe_name(metric)}",
                        lambda w, m=metric: forest_plot(compare_df, m, baseline=base, width=w, colors=colors))
                       for metric in dict.fromkeys(compare_df["metric"])]
    headline = tuple(m for m in HEADLINE_FOREST if m in set(compare_df["metric"]))
    if len(headline) >= 2:
        jobs.append(("forest_headline", lambda w: forest_panels(compare_df, headline, baseline=base, width=w,
                                                                colors=colors)))
    return jobs


def figure_jobs(grid: F.GridData, compare_df: pd.DataFrame | None = None,
                lrsens_df: pd.DataFrame | None = None, *, growth_df: pd.DataFrame | None = None,
                skipped: dict[str, str] | None = None) -> list[Job]:
    """(file stem, width -> figure) for every figure kind a report makes, all with the grid's one
    arm colour mapping; kinds that cannot apply are put in `skipped` with the reason."""
    skipped = {} if skipped is None else skipped
    colors = S.arm_colors(grid.arms, grid.baseline)
    jobs: list[Job] = [
        ("loss_curves", lambda w: loss_curves(grid, width=w, colors=colors)),
        ("grad_norm_curves", lambda w: grad_norm_curves(grid, width=w, colors=colors)),
        *_heatmap_jobs(grid, skipped),
        ("attn_logit_curves", lambda w: attn_logit_curves(grid, width=w, colors=colors)),
        ("attn_logit_layers", lambda w: attn_logit_layers(grid, width=w)),
        ("log_z_curves", lambda w: log_z_curves(grid, width=w, colors=colors)),
        ("embedding_norm_curves", lambda w: embedding_norm_curves(grid, width=w, colors=colors)),
        ("update_rms_and_eps", lambda w: update_rms_and_eps(grid, width=w, colors=colors)),
        ("lr_sensitivity", lambda w: lr_sensitivity_figure(grid, lrsens_df, width=w, colors=colors)),
        *_growth_job(grid, "growth_vs_width", skipped),
        ("spike_scores", lambda w: spike_scores_figure(grid, compare_df, width=w, colors=colors)),
    ]
    if growth_df is not None:
        jobs += _growth_job(growth_df, "growth_vs_width_probe", skipped)
    return jobs + _forest_jobs(grid, compare_df, colors, skipped)


def _render(name: str, make: Callable[[str], Figure], width: str, skipped: dict[str, str]) -> Figure | None:
    """The figure, or None with the reason in `skipped` (missing data, or any failure: one
    broken figure must not cost the others)."""
    try:
        return make(width)
    except MissingData as e:
        skipped[name] = str(e)
    except Exception as e:
        log.exception("figure %s (%s) failed", name, width)
        skipped[name] = f"failed: {type(e).__name__}: {e}"
    return None


def report_figures(grid: F.GridData, compare_df: pd.DataFrame | None = None,
                   lrsens_df: pd.DataFrame | None = None, out_dir: str | os.PathLike | None = None, *,
                   growth_df: pd.DataFrame | None = None, reasons: dict[str, str] | None = None,
                   formats: tuple[str, ...] = FORMATS, widths: tuple[str, ...] = WIDTHS) -> list[Path]:
    """Make and save (`formats`, png + pdf by default, via `save_figure`) every figure the data
    supports, at each of `widths`: "double" (7.2 in) into `out_dir`, "single" (3.5 in) into
    `out_dir/single`; returns the paths.

    A figure whose data is missing is skipped and its reason logged (INFO, "reports.figures") and
    put in `reasons` when given: e.g. the LR figure needs >= 2 LRs, growth vs width >= 2 widths,
    forest plots a `compare_df`. Heatmaps: the worst-spiking run of the baseline and of the worst
    arm (highest mean grad-norm spike score). `growth_df`: a probe growth table (growth_table
    output, lambda_* column names accepted) for an extra `growth_vs_width_probe` figure. A figure
    that fails for another reason is logged with its traceback and skipped too.
    """
    if out_dir is None:
        raise TypeError("report_figures needs out_dir")
    for width in widths:
        S.check_width(width)
    skipped: dict[str, str] = {} if reasons is None else reasons
    jobs = figure_jobs(grid, compare_df, lrsens_df, growth_df=growth_df, skipped=skipped)
    paths: list[Path] = []
    for name, make in jobs:
        for width in widths:
            fig = _render(name, make, width, skipped)
            if fig is None:
                break  # the data is the same at every width
            paths += save_figure(fig, Path(out_dir) / SUBFOLDER[width], name, formats=formats)
            fig.clear()
    for name, reason in skipped.items():
        log.info("grid %r: figure %s skipped: %s", grid.name, name, reason)
    return paths
