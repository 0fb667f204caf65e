"""reports.tables: number formatting, Markdown / LaTeX escaping and structure, CSV round trip, writing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reports import frames as F
from reports import stats as S
from reports import tables as T

EVIL = "a_b&c<script>"


def _runs(arms: dict[str, list[float]], diverged: tuple[str, int] | None = None) -> pd.DataFrame:
    rows = []
    for arm, values in arms.items():
        for seed, v in enumerate(values):
            bad = diverged == (arm, seed)
            rows.append({F.ARM: arm, F.SEED: seed, F.LR: 1e-3, F.STATUS: "diverged" if bad else "finished",
                         F.DIVERGED_AT_STEP: 120 if bad else None, F.FINAL_EVAL_LOSS: v,
                         F.LOSS_AT_INIT: 10.0})
    return F.typed_runs(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def compare() -> pd.DataFrame:
    runs = _runs({"base": [3.0, 3.1, 3.2, 3.3, 3.4, 3.5],
                  EVIL: [3.5, 3.7, 3.4, 3.9, 3.6, 4.0],
                  "tiny|pipe": [3.01, 3.09, 3.22, 3.3, 3.41, 3.5]}, diverged=(EVIL, 1))
    return S.compare_arms(runs, "base", [F.FINAL_EVAL_LOSS, S.DIVERGENCE], n_boot=500)


def test_numbers():
    assert [T.fmt_sig(x) for x in (0.0123456, -0.15, 1.23456, 123.456, 4567.8, 0.0, 2.5e-5, 3e6)] == \
        ["0.0123", "-0.150", "1.23", "123", "4568", "0", "2.50e-05", "3.00e+06"]
    assert [T.fmt_sig(x) for x in (np.nan, None, np.inf, -np.inf)] == [T.NA, T.NA, "inf", "-inf"]
    assert [T.fmt_p(p) for p in (0.031, 0.0312, 0.00099, 0.5, 1.0, np.nan)] == \
        ["0.031", "0.031", "<0.001", "0.500", "1.000", T.NA]
    assert T.format_value("n_pairs", np.int64(6)) == "6" and T.format_value("n_pairs", 6.0) == "6"
    assert T.format_value("lr", 0.003) == "0.003" and T.format_value("p_improve", 2 / 3) == "0.67"
    assert T.format_value("mean_diff", 6.0) == "6.00" and T.format_value("note", "x") == "x"
    assert T.format_value("seed", pd.NA) == T.NA


def test_escaping():
    assert T.escape_latex(r"& % $ # _ { } ~ ^ \ < >") == (
        r"\& \% \$ \# \_ \{ \} \textasciitilde{} \textasciicircum{} \textbackslash{} "
        r"\textless{} \textgreater{}")
    assert T.escape_latex(EVIL) == r"a\_b\&c\textless{}script\textgreater{}"
    assert T.escape_markdown(EVIL) == r"a\_b&amp;c&lt;script&gt;"
    assert T.escape_markdown("a|b*c`d\\e") == r"a\|b\*c\`d\\e"
    assert T.escape_markdown("[x](javascript:alert(1))").startswith(r"\[x\]")
    assert T.escape_markdown("<0.001") == "<0.001" and T.escape_markdown("[0.1, 0.2]") == "[0.1, 0.2]"
    assert T.escape_markdown("two\nlines") == "two lines"


def test_markdown_compare_table(compare):
    md = T.format_compare_table(compare, "markdown")
    lines = md.strip().split("\n")
    assert len(lines) == 2 + len(compare)
    assert lines[0].startswith("| arm | metric | n | baseline |") and "lr" not in lines[0].split(" | ")
    assert set(lines[1]) <= set("|-:")
    n_cols = lines[0].count(" | ") + 1
    for line in lines[2:]:  # escaped pipes do not split cells
        assert line.replace(r"\|", "").count(" | ") + 1 == n_cols
    assert "<script>" not in md and r"a\_b&amp;c&lt;script&gt;" in md and r"tiny\|pipe" in md
    row = next(line for line in lines if line.startswith(r"| a\_b&amp;c") and "final\\_eval\\_loss" in line)
    r = compare[(compare["arm"] == EVIL) & (compare["metric"] == F.FINAL_EVAL_LOSS)].iloc[0]
    # diffs 0.5, 6.9 (diverged: 10 - 3.1), 0.2, 0.6, 0.2, 0.5 -> mean 8.9 / 6
    assert r["mean_diff"] == pytest.approx(8.9 / 6)
    assert "| 1.48 |" in row
    assert f"[{T.fmt_sig(r['ci_low'])}, {T.fmt_sig(r['ci_high'])}]" in row
    assert "| 0.031 |" in row  # all 6 differences positive: exact p = 2/64
    assert "1/0 (s1@120)" in row and "diverged runs count as loss\\_at\\_init" in row
    div_row = next(line for line in lines if "diverged\\_at\\_step" in line and line.startswith(r"| a\_b"))
    assert f"| {T.NA} |" in div_row and "too few non-zero differences (1 of n=6) for wilcoxon" in div_row


def test_latex_compare_table(compare):
    tex = T.format_compare_table(compare, "latex")
    lines = tex.strip().split("\n")
    assert lines[0].startswith(r"\begin{tabular}{ll") and lines[-1] == r"\end{tabular}"
    assert lines[1] == r"\toprule" and lines[3] == r"\midrule" and lines[-2] == r"\bottomrule"
    assert r"$\Delta$ mean" in lines[2]
    body = lines[4:-2]
    assert len(body) == len(compare) and all(line.endswith(r" \\") for line in body)
    n_cols = len(lines[0][len(r"\begin{tabular}{"):-1])
    for line in body:  # every & of a user string is escaped
        assert len(line.replace(r"\&", "").split(" & ")) == n_cols
    assert r"a\_b\&c\textless{}script\textgreater{}" in tex and "<script>" not in tex
    assert "---" in tex and T.NA not in tex


def test_lr_column_shows_with_several_lrs(compare):
    two = pd.concat([compare.assign(lr=1e-3), compare.assign(lr=1e-2)], ignore_index=True)
    header = T.format_compare_table(two).split("\n")[0]
    assert "| lr |" in header
    assert "| 0.01 |" in T.format_compare_table(two)


def test_csv_round_trips(compare, tmp_path):
    text = T.format_compare_table(compare, "csv")
    assert text.splitlines()[0] == ",".join(S.COMPARE_COLUMNS)
    paths = T.write_tables({"compare": compare}, tmp_path)
    assert [p.name for p in paths] == ["compare.md", "compare.tex", "compare.csv"]
    back = pd.read_csv(tmp_path / "compare.csv", keep_default_na=False, na_values=[""])
    assert list(back.columns) == list(compare.columns) and len(back) == len(compare)
    for col in compare.columns:
        if not pd.api.types.is_numeric_dtype(compare[col]):
            assert ["" if pd.isna(v) else str(v) for v in back[col]] == compare[col].tolist(), col
        else:
            np.testing.assert_array_equal(back[col].to_numpy(dtype=float), compare[col].to_numpy(dtype=float))
    assert (tmp_path / "compare.md").read_text() == T.format_compare_table(compare, "markdown")
    assert (tmp_path / "compare.tex").read_text() == T.format_compare_table(compare, "latex")


def test_write_tables_generic_frames_and_atomic_replace(tmp_path):
    runs = _runs({"base": [3.0, 3.1], EVIL: [3.2, 3.3]}, diverged=(EVIL, 0))
    summary = S.summary_by_arm(runs, [F.FINAL_EVAL_LOSS])
    (tmp_path / "summary.md").write_text("old")
    paths = T.write_tables({"summary": summary}, tmp_path / "out", formats=("markdown",))
    assert paths == [tmp_path / "out" / "summary.md"]
    paths = T.write_tables({"summary": summary}, tmp_path)
    assert len(paths) == 3 and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == \
        ["summary.csv", "summary.md", "summary.tex"]  # no temporary files left behind
    md = (tmp_path / "summary.md").read_text()
    assert md != "old" and r"| a\_b&amp;c&lt;script&gt; | 0.001 | 2 | 1 | 1 |" in md
    assert "s0@120" in md and "| 6.65 |" in md  # (10 + 3.3) / 2: the diverged run counts at init
    assert r"a\_b\&c" in (tmp_path / "summary.tex").read_text()
    with pytest.raises(ValueError):
        T.write_tables({"../escape": summary}, tmp_path)
    with pytest.raises(ValueError):
        T.format_table(summary, "html")


def test_seeds_better_counts_ties_and_leaves_undirected_metrics_empty():
    runs = _runs({"base": [3.0, 3.1, 3.2], "arm": [2.9, 3.1, 3.3]})
    runs[F.MAX_GRAD_NORM] = [1.0, 2.0, 3.0, 0.5, 2.0, 2.5]
    cmp = S.compare_arms(runs, "base", [F.FINAL_EVAL_LOSS, F.MAX_GRAD_NORM], n_boot=200)
    header, *_, loss, grad = [line.split(" | ") for line in T.format_compare_table(cmp).split("\n")
                              if line.startswith("|")]
    col = header.index("seeds better")
    assert loss[col] == "1/3, 1 tie" and grad[col] == T.NA
    assert "P(better)" not in " ".join(header)


def test_compare_notes_are_said_once_under_the_table():
    rows = {"base": [3.0, 3.1, 3.2, 3.3], "a": [3.1, 3.2, 3.3, 3.5], "b": [3.0, 3.2, 3.1, 3.4]}
    runs = _runs(rows)
    runs = runs.assign(**{F.MAX_GRAD_NORM: np.arange(len(runs), dtype=float)})
    runs = runs[~((runs[F.ARM] == "b") & (runs[F.SEED] >= 2))]  # b: 2 pairs, a: 4
    cmp = S.compare_arms(runs, "base", [F.FINAL_EVAL_LOSS, F.MAX_GRAD_NORM, S.DIVERGENCE], n_boot=200)
    notes = T.compare_notes(cmp)
    assert notes[0] == ("too few seeds (n=2 to 4) for wilcoxon: wilcoxon needs at least 6 paired seeds "
                        "for a p-value, so p and p (Holm) are left empty")
    assert notes[1].startswith("max_grad_norm: no better direction") and len(notes) == 2
    md = T.format_compare_table(cmp)
    assert md.count("too few seeds") == 1 and md.count("no better direction") == 1
    assert md.rstrip().split("\n")[-1] == "Note: " + T.escape_markdown(notes[1]) + "."
    assert all("too few" not in line for line in md.split("\n") if line.startswith("|"))
    tex = T.format_compare_table(cmp, "latex")
    assert tex.count("too few seeds") == 1 and r"max\_grad\_norm: no better direction" in tex
    assert tex.index(r"\end{tabular}") < tex.index("Note: too few seeds")
    six = S.compare_arms(_runs({"base": [3.0, 3.1, 3.2, 3.3, 3.4, 3.5], "a": [3.1, 3.2, 3.3, 3.5, 3.6, 3.4]}),
                         "base", [F.FINAL_EVAL_LOSS], n_boot=200)
    assert T.compare_notes(six) == [] and "Note:" not in T.format_compare_table(six)
    some = T.few_seeds_note(pd.concat([cmp, six], ignore_index=True))
    assert some.startswith("too few seeds (n=2 to 4) for wilcoxon in 6 of 7 comparisons:")


def test_summary_table_is_a_readable_few_columns_and_the_full_one_stays_csv(tmp_path):
    runs = _runs({"base": [3.0, 3.1, 3.2], EVIL: [3.2, 3.3, 3.4]}, diverged=(EVIL, 0))
    runs[F.MAX_ATTN_LOGIT] = [10.0, 12.0, 14.0, 17000.0, 18000.0, 19000.0]
    full = S.summary_by_arm(runs)
    assert len(full.columns) > 30
    paths = T.write_summary_tables(full, tmp_path)
    assert [p.name for p in paths] == ["summary.md", "summary.tex", "summary.csv", "summary_full.csv"]
    md = (tmp_path / "summary.md").read_text()
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header == ["arm", "runs", "diverged", "Final eval loss (CE, nats)", "Grad-norm spike score (%)",
                      "Max gradient L2 norm", "Max attention logit", "Final mean log Z (nats)"]
    base, evil = md.splitlines()[2:4]
    assert base.startswith("| base | 3 | 0 | 3.10 ± 0.100 |")
    # the diverged run counts at its loss at init (10): mean of (10, 3.3, 3.4)
    assert evil.startswith(r"| a\_b&amp;c&lt;script&gt; | 3 | 1 (s0@120) | 5.57 ± 3.84 |")
    assert evil.endswith("| — | — | 18000 ± 1000 | — |")  # no spike scores, grad norms or log Z here
    assert md.splitlines()[1] == "|---|---:|---|" + "---:|" * 5  # numbers right-aligned, text not
    assert "summary\\_full.csv" in md.split("\n\n")[-1]
    tex = (tmp_path / "summary.tex").read_text()
    assert r"Grad-norm spike score (\%)" in tex and r"a\_b\&c" in tex and "±" in tex
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv.columns)[:5] == ["arm", "n_runs", "n_diverged", "diverged_steps", "final_eval_loss_mean"]
    np.testing.assert_allclose(csv["max_attn_logit_mean"], [12.0, 18000.0])
    back = pd.read_csv(tmp_path / "summary_full.csv")
    assert list(back.columns) == list(full.columns)
    several = S.summary_by_arm(pd.concat([runs, runs.assign(**{F.LR: 1e-2})], ignore_index=True))
    assert T.format_summary_table(several).splitlines()[0].startswith("| arm | lr | runs |")
