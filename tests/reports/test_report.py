"""`stability report` on a 2-seed grid: what a reader sees in stdout, summary.md and compare.md.

Two seeds are too few for wilcoxon, max grad norm has no better direction, olmo0424 and the
baseline both have no spikes (a +0 [0, 0] difference), no run diverges and no loss spike score is
above 0: each of these is said once, in words, and no empty figure is written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

import reports.load
from reports import frames as F
from reports.commands import add_report_parsers, cmd_report
from reports.report import headline_text
from reports.stats import compare_arms
from stability import metric_names as M
from tests.reports.factories import synthetic_grid

ARMS = ("olmo2", "no_qk_norm", "olmo0424")
SKIPPED_FIGURES = (f"forest_{F.DIVERGED_AT_STEP}", f"forest_{F.SPIKE_SCORE_LOSS}")


def two_seed_grid() -> F.GridData:
    """2 seeds; a grad-norm spike in no_qk_norm seed 0 only; every loss spike score 0."""
    grid = synthetic_grid(arms=ARMS, seeds=(0, 1), steps=60, spike_steps={("no_qk_norm", 0, 3e-3): [30]})
    grid.runs[F.SPIKE_SCORE_LOSS] = 0.0
    s = grid.series
    s.loc[s["metric"] == M.SPIKE_SCORE_LOSS, "value"] = 0.0
    return grid


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, str]:
    """(report folder, stdout) of `stability report` run on the 2-seed grid (loading stubbed)."""
    out = tmp_path_factory.mktemp("report")
    parser = argparse.ArgumentParser()
    add_report_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "synthetic", "--out", str(out), "--bootstrap", "200", "--no-attach",
                              "--tracking-uri", f"sqlite:///{out}/unused.db"])
    grid = two_seed_grid()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reports.load, "load_grid", lambda source, uri: grid)
        buf = io.StringIO()  # capsys is function-scoped; the report is built once for the module
        with contextlib.redirect_stdout(buf):
            assert cmd_report(args) == 0
    return out, buf.getvalue()


def table_rows(md: str) -> tuple[list[str], list[list[str]]]:
    """(header, body rows) of the first pipe table in `md`, cells stripped (escaped pipes kept)."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return split[0], split[2:]


def esc(name: str) -> str:
    """`name` as the Markdown files write it."""
    return name.replace("_", "\\_")


def cell(md: str, arm: str, metric: str, column: str) -> str:
    header, rows = table_rows(md)
    (row,) = [r for r in rows if r[0] == esc(arm) and r[1] == esc(metric)]
    return row[header.index(column)]


def summary_line(summary: str, arm: str, metric: str) -> str:
    """The bullet of `metric` under the arm's heading in summary.md."""
    block = summary.split(f"- **{esc(arm)}**")[1].split("\n- **")[0]
    (line,) = [x for x in block.splitlines() if x.strip().startswith(f"- {esc(metric)}:")]
    return line


def test_too_few_seeds_is_said_once_per_report(reported):
    out, stdout = reported
    summary = (out / "summary.md").read_text()
    compare = (out / "tables" / "compare.md").read_text()
    assert summary.count("too few seeds") == 1 and "too few seeds (n=2) for wilcoxon" in summary
    assert compare.count("too few seeds") == 1
    assert (out / "tables" / "compare.tex").read_text().count("too few seeds") == 1
    assert stdout.count("too few seeds") == 1
    header, rows = table_rows(compare)
    assert len(rows) == 2 * 11  # 2 arms x 11 metrics
    for row in rows:  # no row repeats it; p cells are empty, and the note line says why
        assert "too few" not in " ".join(row)
        assert row[header.index("p")] == row[header.index("p (Holm)")] == "—"


def test_no_better_count_for_a_metric_without_direction(reported):
    out, _ = reported
    summary = (out / "summary.md").read_text()
    compare = (out / "tables" / "compare.md").read_text()
    for arm in ARMS[1:]:
        assert cell(compare, arm, F.MAX_GRAD_NORM, "seeds better") == "—"
        line = summary_line(summary, arm, F.MAX_GRAD_NORM)
        assert "better" not in line and "tied" not in line
        assert re.search(r"better in \d/2 seeds", summary_line(summary, arm, F.FINAL_EVAL_LOSS))
    notes = [line for line in summary.splitlines() if "no better direction" in line]
    assert len(notes) == 1 and r"max\_grad\_norm" in notes[0]


def test_a_zero_difference_is_reported_as_ties(reported):
    out, _ = reported
    summary = (out / "summary.md").read_text()
    compare = (out / "tables" / "compare.md").read_text()
    line = summary_line(summary, "olmo0424", F.SPIKE_SCORE_GRAD_NORM)
    assert line.endswith(": +0 [0, 0], tied in 2/2 seeds")
    assert cell(compare, "olmo0424", F.SPIKE_SCORE_GRAD_NORM, "seeds better") == "0/2, 2 ties"
    # no_qk_norm: one seed spiked (worse), the other ties the baseline's 0
    assert summary_line(summary, "no_qk_norm", F.SPIKE_SCORE_GRAD_NORM).endswith("better in 0/2 seeds, 1 tie")
    assert not re.search(r"\d% of seeds", summary)  # no share that counts a tie as half a win


def test_empty_figures_are_not_written_and_listed_once(reported):
    out, stdout = reported
    summary = (out / "summary.md").read_text()
    written = {p.stem for p in (out / "figures").glob("*.png")}
    assert "spike_scores" in written and f"forest_{F.SPIKE_SCORE_GRAD_NORM}" in written
    for name in SKIPPED_FIGURES:
        assert name not in written
        assert f"figures/{name}.png" not in summary
        assert summary.count(esc(name)) == 1 and stdout.count(name) == 1
    not_drawn = summary.split("Not drawn:")[1].split("Tables:")[0]
    assert r"- forest\_diverged\_at\_step: no run diverged" in not_drawn
    assert summary.count("Not drawn:") == 1 and stdout.count("not drawn:") == 1


def test_cli_prints_the_path_and_the_headline_not_the_summary(reported):
    out, stdout = reported
    lines = stdout.strip().splitlines()
    assert re.fullmatch(rf"report: {re.escape(str(out / 'summary.md'))} \(\d+ files\)", lines[0])
    assert lines[1] == f"synthetic: {F.FINAL_EVAL_LOSS}, arm - olmo2 (mean [95% CI], 2 seeds):"
    for arm, line in zip(ARMS[1:], lines[2:4]):
        assert line.split()[0] == arm and re.search(r"\[.+\], better in \d/2 seeds$", line)
    assert lines[4].startswith("note: too few seeds (n=2) for wilcoxon") and lines[5] == "not drawn:"
    drawn_not = dict(line.strip().split(": ", 1) for line in lines[6:])  # one "  name: reason" line each
    assert drawn_not[f"forest_{F.DIVERGED_AT_STEP}"] == "no run diverged"
    assert set(SKIPPED_FIGURES) <= set(drawn_not) and "lr_sensitivity" in drawn_not
    summary = (out / "summary.md").read_text()
    assert "# Grid" not in stdout and "##" not in stdout and "![" not in stdout
    assert F.MAX_ATTN_LOGIT not in stdout and len(stdout) < len(summary) / 3


def test_headline_orders_arms_by_lr_and_names_the_baseline_used():
    grid = synthetic_grid(arms=("a", "b", "c"), seeds=(0, 1), lrs=(1e-3, 1e-2), steps=40, baseline=None,
                          diverged={("c", 1, 1e-2): 20})
    compare = compare_arms(grid, "a", [F.FINAL_EVAL_LOSS], n_boot=200)
    lines = headline_text(grid, compare, {}, baseline="a").splitlines()
    assert lines[0] == f"synthetic: {F.FINAL_EVAL_LOSS}, arm - a (mean [95% CI], 2 seeds):"
    assert [line.split("  ")[1].strip() for line in lines[1:5]] == \
        ["b (lr 0.001)", "b (lr 0.01)", "c (lr 0.001)", "c (lr 0.01)"]
    assert lines[4].endswith("(diverged runs count as loss_at_init)")
    assert lines[5:] == [lines[5]] and lines[5].startswith("note: too few seeds")
    lone = synthetic_grid(arms=("a",), seeds=(0,), steps=20, baseline="a")
    assert headline_text(lone, compare_arms(lone, "a", n_boot=200), {"x": "why"}).splitlines() == \
        ["synthetic: no paired difference against a baseline (arms: a)", "not drawn:", "  x: why"]


def test_runs_without_an_eval_headline_the_final_training_loss():
    grid = synthetic_grid(arms=("a", "b"), seeds=(0, 1, 2), steps=40, baseline="a", arm_offset={"b": 0.5})
    grid.runs[[F.FINAL_EVAL_LOSS, F.BEST_EVAL_LOSS]] = np.nan  # a hook run: the loop has no eval
    compare = compare_arms(grid, "a", n_boot=200)
    first = headline_text(grid, compare, {}).splitlines()[0]
    assert first == f"synthetic: {F.FINAL_TRAIN_LOSS}, arm - a (mean [95% CI], 3 seeds):"


def test_without_loss_spikes_the_lead_lag_section_is_one_line(reported):
    out, stdout = reported
    summary = (out / "summary.md").read_text()
    section = summary.split("## What came before the loss spikes\n")[1].split("\n## ")[0]
    assert section.strip() == "No loss spikes in this grid (no loss event in any run's spikes.csv)."
    assert not list(out.rglob("leadlag.*")) and "leadlag" not in summary and "leadlag" not in stdout
