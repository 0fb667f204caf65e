"""The Markdown and LaTeX report escapes every user string: arm names and the grid name like
`<script>alert(1)</script>` or `a&b_c%` never reach summary.md or the .md/.tex tables raw.

The HTML dashboards: tests/reports/test_dashboard.py::test_static_export_is_json_data_under_a_csp_never_markup
and tests/reports/test_dashboard_browser.py::test_hostile_names_execute_nothing_static_or_served;
the escaping functions themselves: tests/reports/test_tables.py::test_escaping."""

from __future__ import annotations

import re

from reports.report import build_report
from tests.reports.factories import synthetic_grid

SCRIPT = "<script>alert(1)</script>"
AMP = "a&b_c%"
NAME = "<b>grid</b>_&%"


def test_report_escapes_user_strings_in_markdown_and_latex(tmp_path):
    grid = synthetic_grid(arms=("olmo2", SCRIPT, AMP), seeds=(0, 1), steps=40, name=NAME,
                          diverged={(AMP, 1, 3e-3): 20})
    build_report(grid, tmp_path, formats=(), n_boot=200)
    md_files = [tmp_path / "summary.md", *sorted((tmp_path / "tables").glob("*.md"))]
    tex_files = sorted((tmp_path / "tables").glob("*.tex"))
    assert len(md_files) >= 4 and len(tex_files) >= 3
    for path in md_files:
        text = path.read_text()
        assert not re.search(r"<\s*/?\s*(script|b)\b", text, re.IGNORECASE), path.name
        assert "a&b" not in text, path.name  # & before a letter would start an entity
    summary = (tmp_path / "summary.md").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in summary
    assert r"a&amp;b\_c%" in summary  # listed as diverged, escaped
    assert r"# Grid `&lt;b&gt;grid&lt;/b&gt;\_&%`" in summary
    runs_tex = (tmp_path / "tables" / "runs.tex").read_text()
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{}" in runs_tex
    assert r"a\&b\_c\%" in runs_tex
    for path in tex_files:
        text = path.read_text()
        assert SCRIPT not in text and AMP not in text and "<" not in text, path.name
        rows = [line for line in text.splitlines() if line.endswith(r"\\")]
        columns = {len(re.findall(r"(?<!\\)&", line)) for line in rows}
        assert len(columns) == 1, (path.name, columns)  # every unescaped & is a column separator
        assert not re.search(r"(?<!\\)[%_]", "\n".join(rows)), path.name
