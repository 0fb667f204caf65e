"""The report's matplotlib figures (OLMo 2 section 3 in kind), each a function of a `GridData` or a
frame returning a `matplotlib.figure.Figure`, plus `save_figure` and `report_figures`.

Figures never touch pyplot: each is a `Figure` on its own Agg canvas, styled by `reports.style`.
A figure function raises `MissingData` (a ValueError) when the grid lacks what it needs, or when
all it would draw is NaN or 0 (no spike anywhere, every paired difference 0, no run diverged):
an empty figure reads like a result. Arms or panels without data are left out and listed in
`fig.skipped` ({what: reason}) and under the title.

- over steps (`reports.figures_curves`): `loss_curves`, `grad_norm_curves`, `log_z_curves`,
  `embedding_norm_curves`, `metric_curves`, `attn_logit_curves`, `update_rms_and_eps`,
  `layer_grad_heatmap`;
- summaries (`reports.figures_summary`): `lr_sensitivity_figure`, `growth_vs_width`,
  `spike_scores_figure`, `forest_plot` (statistics come in as `compare_arms` / `lr_sensitivity`
  frames, never computed here).
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
    embedding_norm_curves,
    grad_norm_curves,
    layer_grad_heatmap,
    log_z_curves,
    loss_curves,
    metric_curves,
    update_rms_and_eps,
)
from reports.figures_summary import forest_plot, growth_vs_width, lr_sensitivity_figure, spike_scores_figure
from stability import metric_names as M

__all__ = [
    "MissingData", "attn_logit_curves", "embedding_norm_curves", "forest_plot", "grad_norm_curves",
    "growth_vs_width", "layer_grad_heatmap", "log_z_curves", "loss_curves", "lr_sensitivity_figure",
    "metric_curves", "report_figures", "save_figure", "spike_scores_figure", "update_rms_and_eps",
]

FORMATS = ("png", "pdf")
DPI = 150
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None}}


def safe_name(name: str) -> str:
    """A file stem from `name`: runs of characters outside [A-Za-z0-9._-] become "_"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "figure"


def save_figure(fig: Figure, out_dir: str | os.PathLike, name: str,
                formats: tuple[str, ...] = FORMATS, dpi: int = DPI) -> list[Path]:
    """Write `fig` as out_dir/name.png (dpi 150) and name.pdf; returns the paths.

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


def _heatmap_jobs(grid: F.GridData, skipped: dict[str, str]) -> list[tuple[str, Callable[[], Figure]]]:
    """Heatmaps of the worst-spiking run of the baseline and of the worst-spiking arm."""
    d = grid.dense
    have = set(d.loc[(d["key"] == M.GRAD_NORM) & (d["head"] == -1), F.RUN_ID]) if len(d) else set()
    if not have:
        skipped["layer_grad_heatmap"] = f"no dense {M.GRAD_NORM} rows"
        return []
    runs = grid.runs[grid.runs[F.RUN_ID].isin(have)]
    jobs: list[tuple[str, Callable[[], Figure]]] = []
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
    for tag, rid in picks:
        jobs.append((f"layer_grad_heatmap_{tag}", lambda rid=rid: layer_grad_heatmap(grid, rid)))
    return jobs


def _growth_job(source, label: str, skipped: dict[str, str]) -> list[tuple[str, Callable[[], Figure]]]:
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
    return [(label, lambda: growth_vs_width(df))]


def report_figures(grid: F.GridData, compare_df: pd.DataFrame | None = None,
                   lrsens_df: pd.DataFrame | None = None, out_dir: str | os.PathLike | None = None, *,
                   growth_df: pd.DataFrame | None = None, reasons: dict[str, str] | None = None,
                   formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Make and save (`formats`, png + pdf by default, via `save_figure`) every figure the data
    supports; returns the paths.

    A figure whose data is missing is skipped and its reason logged (INFO, "reports.figures") and
    put in `reasons` when given: e.g. the LR figure needs >= 2 LRs, growth vs width >= 2 widths,
    forest plots a `compare_df`. Heatmaps: the worst-spiking run of the baseline and of the worst
    arm (highest mean grad-norm spike score). `growth_df`: a probe growth table (growth_table
    output, lambda_* column names accepted) for an extra `growth_vs_width_probe` figure. A figure
    that fails for another reason is logged with its traceback and skipped too.
    """
    if out_dir is None:
        raise TypeError("report_figures needs out_dir")
    skipped: dict[str, str] = {} if reasons is None else reasons
    jobs: list[tuple[str, Callable[[], Figure]]] = [
        ("loss_curves", lambda: loss_curves(grid)),
        ("grad_norm_curves", lambda: grad_norm_curves(grid)),
        *_heatmap_jobs(grid, skipped),
        ("attn_logit_curves", lambda: attn_logit_curves(grid, logy=True)),  # spans decades
        ("log_z_curves", lambda: log_z_curves(grid)),
        ("embedding_norm_curves", lambda: embedding_norm_curves(grid)),
        ("update_rms_and_eps", lambda: update_rms_and_eps(grid)),
        ("lr_sensitivity", lambda: lr_sensitivity_figure(grid, lrsens_df)),
        *_growth_job(grid, "growth_vs_width", skipped),
        ("spike_scores", lambda: spike_scores_figure(grid, compare_df)),
    ]
    if growth_df is not None:
        jobs += _growth_job(growth_df, "growth_vs_width_probe", skipped)
    if compare_df is None or not len(compare_df):
        skipped["forest"] = "no compare_df (paired statistics) given"
    else:
        for metric in dict.fromkeys(compare_df["metric"]):
            jobs.append((f"forest_{safe_name(metric)}",
                         lambda m=metric: forest_plot(compare_df, m, baseline=grid.baseline)))
    paths: list[Path] = []
    for name, make in jobs:
        try:
            fig = make()
        except MissingData as e:
            skipped[name] = str(e)
            continue
        except Exception as e:  # one broken figure must not cost the others
            log.exception("figure %s failed", name)
            skipped[name] = f"failed: {type(e).__name__}: {e}"
            continue
        paths += save_figure(fig, out_dir, name, formats=formats)
        fig.clear()
    for name, reason in skipped.items():
        log.info("grid %r: figure %s skipped: %s", grid.name, name, reason)
    return paths
