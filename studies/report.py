"""The reproduction report: a report per study (`reports.report`), the growth-exponent figure,
the findings table (`studies.findings`) and one summary.md that links them."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from reports import frames as F
from reports.figures import SUBFOLDER, WIDTHS, growth_vs_width, save_figure
from reports.load import load_grid
from reports.report import build_report
from reports.tables import atomic_write_text
from studies.catalog import UP
from studies.figure import findings_figure
from studies.findings import COLUMNS, TEST, findings_markdown, findings_table, paired_row, study_findings
from studies.reproduce import Plan, duration, init_of

GROWTH_PAPER = "N(0, 0.02) keeps lambda nearer 0 across widths than the scaled init (figure)"


def growth_findings(table: pd.DataFrame, baseline: str, arm: str, n_boot: int) -> pd.DataFrame:
    """Per seed, the mean |lambda| over widths of `arm` minus `baseline`'s (activations, gradients)."""
    widths = sorted(int(w) for w in set(table[F.D_MODEL]))
    rows = []
    for col, what in ((F.GROWTH_ACT, "activations"), (F.GROWTH_GRAD, "gradients")):
        per = table.assign(a=table[col].abs()).groupby(["init", "seed"])["a"].mean().unstack("init")
        pairs = per[[baseline, arm]].dropna()
        rows.append(paired_row(pairs[baseline], pairs[arm], n_boot, study="study_init", arm=arm,
                               baseline=baseline, measure=f"mean |growth exponent| of {what} over "
                               f"widths {widths}", lr=None, paper=GROWTH_PAPER, expected=UP))
    return findings_table(rows)


def _growth_figure(table: pd.DataFrame, out: Path) -> list[Path]:
    paths = []
    for width in WIDTHS:
        fig = growth_vs_width(table, width=width)
        paths += save_figure(fig, out / "figures" / SUBFOLDER[width], "growth_vs_width")
        fig.clear()
    return paths


def _figure_md(study_dir: str, stem: str, report_dir: Path) -> str | None:
    png = report_dir / "figures" / f"{stem}.png"
    return f"![{stem}]({study_dir}/figures/{stem}.png)" if png.is_file() else None


def write_reproduction(plan: Plan, uri: str, out: Path, *, growth: pd.DataFrame | None,
                       run_seconds: dict[str, float], command: str, n_boot: int = 10_000) -> Path:
    """Reports, findings and summary.md of every study of `plan` that has runs in `uri`."""
    out.mkdir(parents=True, exist_ok=True)
    tables, sections, titles = [], [], {p.study.name: p.study.title for p in plan.studies}
    report_seconds: dict[str, float] = {}
    for p in plan.studies:
        study, name = p.study, p.spec.name
        try:
            grid = load_grid(name, uri)
        except LookupError:
            sections.append(f"## {study.title}\n\nnot run yet (no experiment {name!r} in {uri})\n")
            continue
        t0 = time.monotonic()
        report = build_report(grid, out / name, test=TEST, n_boot=n_boot)
        report_seconds[name] = time.monotonic() - t0
        rows = study_findings(study, grid, n_boot=n_boot)
        if growth is not None and study.growth_widths:
            arm = next(a for a in p.spec.arms if a != p.spec.baseline)
            base_init, arm_init = init_of(p.spec, p.spec.baseline), init_of(p.spec, arm)
            rows = pd.concat([rows, growth_findings(growth, base_init, arm_init, n_boot)],
                             ignore_index=True)
        tables.append(rows)
        figs = [f for f in (_figure_md(name, s, out / name) for s in study.figures) if f]
        if growth is not None and study.growth_widths:
            _growth_figure(growth, out)
            figs.append("![growth vs width](figures/growth_vs_width.png)")
        n_runs = int(grid.runs[F.STATUS].isin(("finished", "diverged")).sum())
        sections.append("\n".join([
            f"## {study.title}", "", study.claim, "",
            f"Grid `{name}` ({len(p.spec.arms)} arms x {len(p.spec.seeds)} seeds"
            f"{f' x {len(p.spec.lrs)} lrs' if p.spec.lrs else ''}, {p.spec.budget.get('steps')} steps of "
            f"{p.spec.preset}; {n_runs} results): [its report]({name}/summary.md).", "",
            "```text", report.headline.split("\nnot drawn:")[0].rstrip(), "```", "",
            *figs, ""]))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(COLUMNS))
    atomic_write_text(out / "findings.csv", table.to_csv(index=False))
    md = findings_markdown(table, titles)
    atomic_write_text(out / "findings.md", md)
    overview = []
    if len(table):
        for width in WIDTHS:
            fig = findings_figure(table, titles, width=width)
            save_figure(fig, out / "figures" / SUBFOLDER[width], "findings")
            fig.clear()
        overview = ["![findings](figures/findings.png)", ""]
    times = ", ".join(f"{n}: {duration(s)}" for n, s in run_seconds.items())
    reports_time = duration(sum(report_seconds.values()))
    summary = "\n".join([
        f"# Reproducing the OLMo 2 stability section (scale {plan.scale!r})", "",
        f"Made by `{command}`. Each study is a paired grid: every arm against the final recipe, seed "
        "for seed; differences are arm - baseline, 95% bootstrap CIs of the mean, paired t-tests "
        "with Holm's correction over a study's findings (\"n.s.\": not significant at 0.05). "
        "\"(ours)\" marks an expectation of ours, not the paper's.", "",
        f"Time: grids {times or 'already done'}; reports {reports_time}.", "",
        "## Findings", "", md, *overview, *sections])
    atomic_write_text(out / "summary.md", summary + "\n")
    return out / "summary.md"
