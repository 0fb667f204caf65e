"""`stability report`: statistics, tables, figures and a short summary for one grid.

    out/summary.md           what the grid shows, in words and numbers (figures linked)
    out/tables/*.{md,tex,csv} compare (every arm vs the baseline, paired), summary (per arm: the
                              headline metrics, mean ± sd), lr_sensitivity (when lrs are swept),
                              runs (one row per run), leadlag (when there are loss spikes: which
                              signals left their range before them, `reports.leadlag`);
                              summary_full.csv: every metric per arm
    out/figures/*.{png,pdf}  the figure kinds the data supports, 7.2 in wide (a paper's text
                              width), PDF and 300-dpi PNG; out/figures/single/: the same at 3.5 in
                              (one column)

Everything comes from a `GridData` (reports.load), so it works on a store copied from elsewhere.
`Report.headline` is the few lines `stability report` prints: each arm against the baseline on
the headline metric, the once-per-report notes, and the figures not drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from reports import frames as F
from reports import leadlag as LL
from reports.figures import SUBFOLDER, WIDTHS, MissingData, leadlag_figure, report_figures, save_figure
from reports.figures_common import log
from reports.lr_sensitivity import lr_sensitivity
from reports.stats import compare_arms, summary_by_arm
from reports.tables import (
    atomic_write_text,
    compare_notes,
    escape_markdown,
    fmt_p,
    fmt_sig,
    format_leadlag_table,
    write_leadlag_tables,
    write_summary_tables,
    write_tables,
)

# what the printed headline compares: the first with a finite paired difference (runs without an
# eval, e.g. through the hooks, fall back to the final training loss)
HEADLINE = (F.FINAL_EVAL_LOSS, F.FINAL_TRAIN_LOSS, F.SPIKE_SCORE_GRAD_NORM, F.MAX_ATTN_LOGIT,
            F.MAX_GRAD_NORM)
RUN_TABLE_COLUMNS = (F.ARM, F.SEED, F.LR, F.STATUS, F.DIVERGED_AT_STEP, F.LAST_STEP, F.FINAL_EVAL_LOSS,
                     F.MAX_GRAD_NORM, F.MAX_ATTN_LOGIT, F.FINAL_LOG_Z, F.SPIKE_SCORE_LOSS,
                     F.SPIKE_SCORE_GRAD_NORM, F.N_SPIKES, F.GROWTH_ACT, F.GROWTH_GRAD)


@dataclass
class Report:
    out_dir: Path
    summary: str
    compare: pd.DataFrame
    lr_sensitivity: pd.DataFrame | None
    paths: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    headline: str = ""
    leadlag: LL.LeadLag | None = None
    leadlag_summary: pd.DataFrame | None = None  # leadlag.summarize by arm; None without loss spikes


def _n_lrs(runs: pd.DataFrame) -> int:
    return runs[F.LR].dropna().nunique()


def build_report(grid: F.GridData, out_dir: str | Path, *, test: str = "wilcoxon", n_boot: int = 10_000,
                 formats: tuple[str, ...] = ("png", "pdf"), widths: tuple[str, ...] = WIDTHS) -> Report:
    """Compute, write and return the report of `grid` in `out_dir`; figures in `formats` at each
    of `widths` ("double" in figures/, "single" in figures/single/)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baseline = grid.baseline or (grid.arms[0] if grid.arms else None)
    compare = compare_arms(grid.runs, baseline, test=test, n_boot=n_boot) if baseline else pd.DataFrame()
    lrs = lr_sensitivity(grid.runs, n_boot=n_boot) if _n_lrs(grid.runs) >= 2 else None
    frames = {"compare": compare, "runs": grid.runs[[c for c in RUN_TABLE_COLUMNS if c in grid.runs.columns]]}
    if lrs is not None:
        frames["lr_sensitivity"] = lrs
    report = Report(out, "", compare, lrs)
    report.paths += write_tables(frames, out / "tables")
    report.paths += write_summary_tables(summary_by_arm(grid.runs), out / "tables")
    report.paths += report_figures(grid, compare, lrs, out / "figures", reasons=report.skipped,
                                   formats=formats, widths=widths)
    report.paths += write_leadlag(grid, report, formats=formats, widths=widths)
    report.summary = summary_text(grid, compare, lrs, report)
    report.headline = headline_text(grid, compare, report.skipped, baseline=baseline)
    atomic_write_text(out / "summary.md", report.summary)
    report.paths.append(out / "summary.md")
    return report


def _status_line(runs: pd.DataFrame) -> str:
    counts = runs[F.STATUS].value_counts()
    return ", ".join(f"{int(counts[s])} {s}" for s in F.STATUSES if s in counts)


def _better_text(row: pd.Series) -> str:
    """"better in 2/3 seeds, 1 tie" / "tied in 2/2 seeds"; "" for a metric without a direction."""
    counts = [row.get(c) for c in ("n_better", "n_ties", "n_worse")]
    if any(pd.isna(x) for x in counts) or sum(counts) == 0:
        return ""
    better, ties, worse = (int(x) for x in counts)
    n = better + ties + worse
    if ties == n:
        return f"tied in {n}/{n} seeds"
    return f"better in {better}/{n} seeds" + (f", {ties} tie{'s' if ties > 1 else ''}" if ties else "")


def _effect_text(row: pd.Series) -> str:
    """`+0.12 [0.05, 0.20], Holm p 0.031, better in 3/3 seeds` (plain text, no note)."""
    text = f"{row['mean_diff']:+.3g} [{fmt_sig(row['ci_low'])}, {fmt_sig(row['ci_high'])}]"
    p = row.get("p_holm")
    text += f", Holm p {fmt_p(p)}" if p is not None and math.isfinite(p) else ""
    better = _better_text(row)
    return text + (f", {better}" if better else "")


def _effect_line(row: pd.Series) -> str:
    """One summary bullet's text: the effect and the row's own note (Markdown)."""
    note = escape_markdown(str(row.get("note") or ""))
    if not math.isfinite(row.get("mean_diff", math.nan)):
        return note or "no paired difference"
    return _effect_text(row) + (f" ({note})" if note else "")


def _headline_rows(compare: pd.DataFrame) -> pd.DataFrame:
    return compare[compare["metric"].isin(HEADLINE)] if len(compare) else compare


def _notes_md(notes: list[str]) -> list[str]:
    return [line for n in notes for line in (f"Note: {escape_markdown(n)}.", "")]


def _skipped_md(skipped: dict[str, str]) -> list[str]:
    if not skipped:
        return []
    return ["Not drawn:", ""] + \
        [f"- {escape_markdown(k)}: {escape_markdown(v)}" for k, v in skipped.items()] + [""]


def summary_text(grid: F.GridData, compare: pd.DataFrame, lrs: pd.DataFrame | None, report: Report) -> str:
    runs = grid.runs
    name = escape_markdown(grid.name)
    lines = [f"# Grid `{name}`", "",
             f"{len(runs)} runs ({_status_line(runs)}); baseline arm: "
             f"`{escape_markdown(str(grid.baseline))}`; generated "
             f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.", ""]
    lines += _notes_md(compare_notes(_headline_rows(compare)))
    diverged = runs[runs[F.STATUS] == "diverged"]
    if len(diverged):
        items = [f"{escape_markdown(str(r[F.ARM]))} seed {r[F.SEED]} lr {r[F.LR]:g} at step "
                 f"{r[F.DIVERGED_AT_STEP]}" for _, r in diverged.iterrows()]
        lines += ["Diverged: " + "; ".join(items) + ".", ""]
    if len(compare):
        lines += ["## Each arm against the baseline (paired on seed: arm - baseline, mean [95% CI])", ""]
        multi_lr = _n_lrs(runs) > 1
        for arm in [a for a in grid.arms if a != grid.baseline]:
            lines.append(f"- **{escape_markdown(arm)}**")
            rows = compare[(compare["arm"] == arm) & (compare["metric"].isin(HEADLINE))]
            for _, row in rows.iterrows():
                lr = f" (lr {row['lr']:g})" if multi_lr and pd.notna(row.get("lr")) else ""
                lines.append(f"  - {escape_markdown(row['metric'])}{lr}: {_effect_line(row)}")
        lines.append("")
    if lrs is not None and len(lrs):
        lines += ["## Learning-rate sensitivity (Wortsman et al.; lower is better)", ""]
        for _, r in lrs.iterrows():
            lines.append(f"- {escape_markdown(str(r['arm']))}: {fmt_sig(r['sensitivity'])} "
                         f"(optimal lr {r['optimal_lr']:g}, best loss {fmt_sig(r['best_loss'])}, "
                         f"{int(r['n_diverged'])} diverged)")
        lines.append("")
    lines += leadlag_md(grid, report)
    lines += _figures_md(report)
    lines += _skipped_md(report.skipped)
    lines += _tables_md(lrs is not None, report.leadlag_summary is not None)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- lead-lag
LEADLAG_FIGURE = "leadlag"  # drawn in its own section, not under Figures


def write_leadlag(grid: F.GridData, report: Report, *, formats: tuple[str, ...] = ("png", "pdf"),
                  widths: tuple[str, ...] = WIDTHS) -> list[Path]:
    """The lead-lag of the grid's loss spikes into `report` (`leadlag`, `leadlag_summary`), its
    tables (tables/leadlag.*) and figure (figures/leadlag.*) when any loss spike was analysed;
    returns the paths written. A figure that fails is skipped (and said), the tables stay."""
    lead = LL.grid_leadlag(grid)
    report.leadlag = lead
    if not (lead.spikes["status"] == LL.ANALYSED).any():
        return []
    report.leadlag_summary = LL.summarize(lead, by=F.ARM)
    paths = write_leadlag_tables(report.leadlag_summary, report.out_dir / "tables", horizon=lead.horizon,
                                 z=lead.z)
    try:
        means = LL.aligned_means(LL.grid_event_aligned(grid, lead))
        for width in widths:
            fig = leadlag_figure(grid, lead, means, width=width)
            paths += save_figure(fig, report.out_dir / "figures" / SUBFOLDER[width], LEADLAG_FIGURE,
                                 formats=formats)
            fig.clear()
    except MissingData as e:
        report.skipped[LEADLAG_FIGURE] = str(e)
    except Exception as e:
        log.exception("figure %s failed", LEADLAG_FIGURE)
        report.skipped[LEADLAG_FIGURE] = f"failed: {type(e).__name__}: {e}"
    return paths


def _spike_counts(spikes: pd.DataFrame, horizon: int) -> str:
    """"5 loss spikes in 2 runs: 3 analysed, 1 within 20 steps of an earlier one, 1 too early"."""
    counts = spikes["status"].value_counts()
    n = len(spikes)
    parts = [f"{int(counts.get(LL.ANALYSED, 0))} analysed"]
    for status, text in ((LL.OVERLAPPING, f"within {horizon} steps after an earlier one (part of its event)"),
                         (LL.TOO_EARLY, "too early for a baseline"),
                         (LL.NO_SIGNALS, "in runs without a signal")):
        if counts.get(status, 0):
            parts.append(f"{int(counts[status])} {text}")
    runs = spikes[F.RUN_ID].nunique()
    head = f"{n} loss spike{'s' if n != 1 else ''} in {runs} run{'s' if runs != 1 else ''}"
    return f"{head}: " + ", ".join(parts)


def leadlag_md(grid: F.GridData, report: Report) -> list[str]:
    """The "What came before the loss spikes" section: counts, the rule in one sentence, a
    sentence per arm, the table and the figure; one line when there is no loss spike."""
    lines = ["## What came before the loss spikes", ""]
    lead = report.leadlag
    if lead is None or not lead.n_loss_spikes:
        return lines + ["No loss spikes in this grid (no loss event in any run's spikes.csv).", ""]
    counts = _spike_counts(lead.spikes, lead.horizon)
    summary = report.leadlag_summary
    if summary is None:
        return lines + [escape_markdown(counts) + ": none could be analysed.", ""]
    lines += [escape_markdown(counts) + f". Onset: the first step, in the {lead.horizon} steps up to a loss "
              f"spike, where a signal is more than {lead.z:g} robust σ (1.4826 × MAD) above the median of "
              f"its last {lead.baseline} points before those steps (below, for the update-gradient cosine); "
              "lead = spike step − onset step, resolved to the signal's cadence (docs/leadlag.md).", ""]
    by_arm = dict(tuple(summary.groupby(F.ARM, sort=False)))
    for arm in grid.arms:
        text = LL.group_sentence(by_arm[arm]) + "." if arm in by_arm else "no analysed loss spike."
        lines.append(f"- **{escape_markdown(arm)}**: {escape_markdown(text)}")
    lines += ["", format_leadlag_table(summary, "markdown", horizon=lead.horizon, z=lead.z)]
    if any(p.stem == LEADLAG_FIGURE and p.parent.name == "figures" for p in report.paths):
        lines += [f"![{LEADLAG_FIGURE}](figures/{LEADLAG_FIGURE}.png)", ""]
    return lines


def _figures_md(report: Report) -> list[str]:
    """The figures section: every figure inline, and where the single-column versions are."""
    figures = sorted({p.stem for p in report.paths if p.parent.name == "figures"} - {LEADLAG_FIGURE})
    if not figures:
        return []
    single = any(p.parent.name == "single" for p in report.paths)
    where = ("7.2 in wide (a paper's text width) as PDF and 300-dpi PNG; the same 3.5 in wide (one "
             "column) in `figures/single/`." if single else "7.2 in wide (a paper's text width).")
    return ["## Figures", "", where, ""] + [f"![{f}](figures/{f}.png)" for f in figures] + [""]


def _tables_md(with_lrs: bool, with_leadlag: bool = False) -> list[str]:
    """Which table holds what; the summary table is the readable one, summary_full.csv all of it."""
    names = "`tables/compare`, `tables/summary`, `tables/runs`"
    names += ", `tables/lr_sensitivity`" if with_lrs else ""
    names += ", `tables/leadlag`" if with_leadlag else ""
    return [f"Tables: {names} (.md, .tex, .csv). `tables/summary` is the readable per-arm table (runs, "
            "divergences and the headline metrics as mean ± sd); every metric's mean, sd and n per arm "
            "is in `tables/summary_full.csv`.", ""]


def _plain_effect(row: pd.Series) -> str:
    """`_effect_line` in plain text, for the terminal."""
    note = str(row.get("note") or "")
    if not math.isfinite(row.get("mean_diff", math.nan)):
        return note or "no paired difference"
    return _effect_text(row) + (f" ({note})" if note else "")


def _headline_metric(compare: pd.DataFrame) -> str | None:
    """The first `HEADLINE` metric with a finite paired difference."""
    for metric in HEADLINE:
        rows = compare[compare["metric"] == metric] if len(compare) else compare
        if len(rows) and rows["mean_diff"].astype(float).map(math.isfinite).any():
            return metric
    return None


def headline_text(grid: F.GridData, compare: pd.DataFrame, skipped: dict[str, str], *,
                  baseline: str | None = None) -> str:
    """What `stability report` prints (plain text): every arm against the baseline (`baseline`,
    default the grid's) on the headline metric, the notes that hold for it, and the figures not
    drawn, each said once."""
    baseline = baseline or grid.baseline
    metric = _headline_metric(compare)
    if metric is None:
        lines = [f"{grid.name}: no paired difference against a baseline (arms: {', '.join(grid.arms)})"]
    else:
        rows = compare[compare["metric"] == metric]
        rank = {arm: i for i, arm in enumerate(grid.arms)}  # compare rows: metric, then lr, then arm
        rows = rows.assign(_rank=rows["arm"].map(rank)).sort_values(["_rank", "lr"], kind="stable")
        multi_lr = rows["lr"].nunique(dropna=False) > 1
        labels = [str(r["arm"]) + (f" (lr {r['lr']:g})" if multi_lr else "") for _, r in rows.iterrows()]
        width = max(len(label) for label in labels)
        n = "/".join(str(x) for x in dict.fromkeys(rows["n_pairs"]))
        lines = [f"{grid.name}: {metric}, arm - {baseline} (mean [95% CI], {n} seeds):"]
        for label, (_, row) in zip(labels, rows.iterrows()):
            lines.append(f"  {label:<{width}}  {_plain_effect(row)}")
        lines += [f"note: {note}" for note in compare_notes(rows)]
    if skipped:
        lines += ["not drawn:"] + [f"  {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines)


def attach_to_mlflow(grid: F.GridData, out_dir: Path, tracking_uri: str, artifact_path: str) -> str | None:
    """Upload `out_dir` to the grid's parent run under `artifact_path`; returns the run id."""
    if not grid.parent_run_id:
        return None
    from stability import store

    store.client(tracking_uri).log_artifacts(grid.parent_run_id, str(out_dir), artifact_path)
    return grid.parent_run_id
