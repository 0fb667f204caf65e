"""`build_report`'s figures and summary table as a paper author finds them: double-column figures in
figures/, single-column ones in figures/single/, a readable summary table and the full one as CSV,
and summary.md saying which is which."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from reports.report import build_report
from reports.stats import summary_by_arm
from tests.reports.factories import synthetic_grid


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    grid = synthetic_grid(seeds=(0, 1), steps=40, spike_steps={("no_qk_norm", 0, 3e-3): [20]})
    build_report(grid, out, n_boot=200, formats=("png", "pdf"))
    return out


def test_figures_at_both_widths_pdf_and_300_dpi_png(report_dir):
    double = sorted((report_dir / "figures").glob("*.png"))
    single = sorted((report_dir / "figures" / "single").glob("*.png"))
    assert double and [p.name for p in single] == [p.name for p in double]
    assert {png_width(p) for p in double} == {2160} and {png_width(p) for p in single} == {1050}
    for png in double + single:
        pdf = png.with_suffix(".pdf")
        assert pdf.read_bytes()[:4] == b"%PDF", pdf


def test_summary_table_is_readable_and_the_full_one_is_csv(report_dir):
    tables = report_dir / "tables"
    header = (tables / "summary.md").read_text().splitlines()[0]
    assert header.count("|") - 1 <= 9 and "Final eval loss (CE, nats)" in header
    full = pd.read_csv(tables / "summary_full.csv")
    assert len(full.columns) == len(summary_by_arm(synthetic_grid(seeds=(0, 1), steps=40)).columns) > 30
    summary = (report_dir / "summary.md").read_text()
    assert "`tables/summary` is the readable per-arm table" in summary
    assert "every metric's mean, sd and n per arm is in `tables/summary_full.csv`" in summary
    assert "the same 3.5 in wide (one column) in `figures/single/`" in summary
    assert "![loss_curves](figures/loss_curves.png)" in summary
