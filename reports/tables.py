"""Render the frames of `reports.stats` as Markdown (GitHub pipe tables), LaTeX (booktabs) and CSV.

Pure Python (no tabulate, no jinja2). Numbers: 3 significant digits, p-values as 0.031 or <0.001,
"—" (LaTeX "---") for a missing value; the note column says why a p-value is missing, except for
what holds for many rows at once (too few seeds, metrics without a better direction): that is
said once, in note lines under the comparison table (`compare_notes`). User strings
(arm names, notes) are escaped for the target format. CSV keeps the raw values at full precision,
so it reads back with `pandas.read_csv`.

The per-arm summary is written twice (`write_summary_tables`): a readable table of a handful of
headline columns (`SUMMARY_HEADLINE`, mean ± sd over seeds, human headers) as summary.md / .tex
with its raw values as summary.csv, and every metric's mean, sd and n as summary_full.csv.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from reports import frames as F
from reports import leadlag as L
from reports import style as S
from reports.stats import MIN_PAIRS, too_few_pairs

NA = "—"
FORMATS = ("markdown", "latex", "csv")
EXTENSIONS = {"markdown": "md", "latex": "tex", "csv": "csv"}
P_COLUMNS = ("p_value", "p_holm")
LR_COLUMNS = ("lr", "optimal_lr")
SHARE_COLUMNS = ("p_improve",)
INT_COLUMNS = ("seed", "diverged_at_step", "last_step")

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}",
}
_LATEX_RE = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIALS))
_MD_BACKSLASH_RE = re.compile(r"([\\`*_|~])")


# ------------------------------------------------------------------------------------- escaping

def escape_latex(text: str) -> str:
    """Escape LaTeX specials (& % $ # _ { } ~ ^ \\ < >) in one pass."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIALS[m.group()], str(text))


def escape_markdown(text: str) -> str:
    """Make `text` literal inside a GitHub table cell: markdown specials, pipes and HTML are escaped."""
    text = str(text).replace("\r", " ").replace("\n", " ")
    text = _MD_BACKSLASH_RE.sub(r"\\\1", text)
    if re.search(r"\]\s*[(\[]|!\[", text):  # only links and images need their brackets escaped
        text = re.sub(r"([\[\]])", r"\\\1", text)
    text = re.sub(r"&(?=[A-Za-z#])", "&amp;", text)
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    return text.replace(">", "&gt;")


# ----------------------------------------------------------------------------------- numbers

def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt_sig(x: float, digits: int = 3) -> str:
    """`x` with `digits` significant digits, fixed point for 1e-3 <= |x| < 1e5, else scientific."""
    if _missing(x):
        return NA
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if not 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits - 1}e}"
    decimals = max(digits - 1 - math.floor(math.log10(abs(x))), 0)
    text = f"{x:.{decimals}f}"
    return "0" if float(text) == 0 else text


def fmt_p(p: float) -> str:
    """A p-value: "0.031", "<0.001", NA when missing."""
    if _missing(p):
        return NA
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_value(column: str, value: Any) -> str:
    """One cell as display text, chosen by column name and value type (not escaped)."""
    if _missing(value):
        return NA
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column in P_COLUMNS:
        return fmt_p(value)
    if column in SHARE_COLUMNS:
        return f"{float(value):.2f}"
    if column in LR_COLUMNS:
        return f"{float(value):g}"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    integer_column = column in INT_COLUMNS or column.startswith("n_") or column.endswith("_n")
    return str(int(x)) if integer_column and x.is_integer() else fmt_sig(x)


# ----------------------------------------------------------------------------------- rendering

_NUMBER = r"[<>]?-?(\d[\d.]*(e[+-]\d+)?|inf)"


def _is_numeric_text(text: str) -> bool:
    """A number, "—", or a "mean ± sd" cell (right-aligned in a table)."""
    return bool(re.fullmatch(rf"{_NUMBER}( ± {_NUMBER})?|" + NA, text))


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub pipe table; cells are display text (escaped here), numeric columns right-aligned."""
    right = [all(_is_numeric_text(r[i]) for r in rows) and bool(rows) for i in range(len(header))]
    lines = ["| " + " | ".join(escape_markdown(h) for h in header) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(escape_markdown(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_latex(header: Sequence[str], rows: Sequence[Sequence[str]], *,
                 latex_header: Sequence[str] | None = None) -> str:
    """A booktabs `tabular`; cells are display text (escaped here). `latex_header` is used verbatim."""
    right = [all(_is_numeric_text(r[i]) for r in rows) and bool(rows) for i in range(len(header))]

    def cell(text: str) -> str:
        return "---" if text == NA else escape_latex(text)

    head = latex_header if latex_header is not None else [escape_latex(h) for h in header]
    lines = [r"\begin{tabular}{" + "".join("r" if r else "l" for r in right) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """Raw values at full precision (reads back with `pandas.read_csv`)."""
    return df.to_csv(index=False, lineterminator="\n")


def format_table(df: pd.DataFrame, fmt: str = "markdown") -> str:
    """Any frame, every column, cells by `format_value`."""
    _check_fmt(fmt)
    if fmt == "csv":
        return to_csv(df)
    header = [str(c) for c in df.columns]
    rows = [[format_value(str(c), v) for c, v in zip(df.columns, row)]
            for row in df.itertuples(index=False, name=None)]
    return render_markdown(header, rows) if fmt == "markdown" else render_latex(header, rows)


# ------------------------------------------------------------------------- the comparison table

def _ci_cell(row: Mapping[str, Any]) -> str:
    if _missing(row["ci_low"]) or _missing(row["ci_high"]):
        return NA
    return f"[{fmt_sig(row['ci_low'])}, {fmt_sig(row['ci_high'])}]"


def _diverged_cell(row: Mapping[str, Any]) -> str:
    arm, base = (row.get(k) for k in ("diverged_steps", "diverged_steps_base"))
    steps = [] if _missing(arm) or not arm else [str(arm)]
    if not _missing(base) and base:
        steps.append(f"base {base}")
    counts = f"{int(row['n_diverged_arm'])}/{int(row['n_diverged_base'])}"
    return counts + (f" ({'; '.join(steps)})" if steps else "")


def _better_cell(row: Mapping[str, Any]) -> str:
    """"2/3", "1/3, 1 tie": seeds where the arm is better, ties apart; NA without a direction."""
    better, ties, worse = (row.get(c) for c in ("n_better", "n_ties", "n_worse"))
    if any(_missing(x) for x in (better, ties, worse)) or better + ties + worse == 0:
        return NA
    n = int(better + ties + worse)
    tied = f", {int(ties)} tie{'s' if ties != 1 else ''}" if ties else ""
    return f"{int(better)}/{n}{tied}"


def few_seeds_note(compare: pd.DataFrame) -> str | None:
    """The one sentence on comparisons without a p-value for lack of seeds (None when there are none)."""
    if not len(compare) or not {"n_pairs", "test"} <= set(compare.columns):
        return None
    few = compare[too_few_pairs(compare)]
    if not len(few):
        return None
    ns = sorted(int(n) for n in few["n_pairs"].unique())
    n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]} to {ns[-1]}"
    tests = list(dict.fromkeys(few["test"]))
    need = " and ".join(f"{t} needs at least {MIN_PAIRS[t]}" for t in tests)
    scope = "" if len(few) == len(compare) else f" in {len(few)} of {len(compare)} comparisons"
    return (f"too few seeds ({n}) for {' or '.join(tests)}{scope}: {need} paired seeds for a p-value, "
            f"so p and p (Holm) are left empty")


def undirected_note(compare: pd.DataFrame) -> str | None:
    """The one sentence naming the metrics with no better direction (no seeds-better count)."""
    if not len(compare) or "direction" not in compare.columns:
        return None
    metrics = list(dict.fromkeys(compare.loc[compare["direction"].fillna("") == "", "metric"]))
    if not metrics:
        return None
    return (f"{', '.join(metrics)}: no better direction (a diagnostic, neither lower nor higher is "
            f"better), so no count of seeds better")


def compare_notes(compare: pd.DataFrame) -> list[str]:
    """What holds for many rows of a `compare_arms` frame, each said once (plain text, unescaped)."""
    return [n for n in (few_seeds_note(compare), undirected_note(compare)) if n]


# (markdown header, latex header, cell)
_CompareColumn = tuple[str, str, Callable[[Mapping[str, Any]], str]]
COMPARE_DISPLAY: tuple[_CompareColumn, ...] = (
    ("arm", "arm", lambda r: str(r["arm"])),
    ("metric", "metric", lambda r: str(r["metric"])),
    ("lr", "lr", lambda r: format_value("lr", r["lr"])),
    ("n", "$n$", lambda r: str(int(r["n_pairs"]))),
    ("baseline", "baseline", lambda r: fmt_sig(r["base_mean"])),
    ("arm mean", "arm mean", lambda r: fmt_sig(r["arm_mean"])),
    ("Δ mean", r"$\Delta$ mean", lambda r: fmt_sig(r["mean_diff"])),
    ("CI (bootstrap)", "CI (bootstrap)", _ci_cell),
    ("p", "$p$", lambda r: fmt_p(r["p_value"])),
    ("p (Holm)", "$p$ (Holm)", lambda r: fmt_p(r["p_holm"])),
    ("seeds better", "seeds better", _better_cell),
    ("diverged arm/base", "diverged arm/base", _diverged_cell),
    ("note", "note", lambda r: str(r["note"]) if not _missing(r["note"]) else ""),
)


def _note_lines(notes: Sequence[str], fmt: str) -> str:
    """Note lines to follow a table: Markdown paragraphs, or small LaTeX text after the tabular."""
    if fmt == "markdown":
        return "".join(f"\nNote: {escape_markdown(n)}.\n" for n in notes)
    return "".join(f"\\par\\smallskip\\noindent{{\\footnotesize Note: {escape_latex(n)}.}}\n" for n in notes)


def format_compare_table(df: pd.DataFrame, fmt: str = "markdown") -> str:
    """A `reports.stats.compare_arms` frame for reading: Δ mean with its CI, p, Holm p, seeds better.

    The lr column shows only when the rows hold several LRs; `compare_notes` follow the table as
    note lines. csv: the raw frame, every column.
    """
    _check_fmt(fmt)
    if fmt == "csv":
        return to_csv(df)
    columns = [c for c in COMPARE_DISPLAY if c[0] != "lr" or df["lr"].nunique(dropna=False) > 1]
    records = df.to_dict("records")
    rows = [[cell(r) for _, _, cell in columns] for r in records]
    header = [md for md, _, _ in columns]
    if fmt == "markdown":
        table = render_markdown(header, rows)
    else:
        table = render_latex(header, rows, latex_header=[tex for _, tex, _ in columns])
    return table + _note_lines(compare_notes(df), fmt)


def is_compare_frame(df: pd.DataFrame) -> bool:
    return {"arm", "metric", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm"} <= set(df.columns)


def render(df: pd.DataFrame, fmt: str) -> str:
    """`format_compare_table` for a compare_arms frame, else `format_table`."""
    return format_compare_table(df, fmt) if is_compare_frame(df) else format_table(df, fmt)


# ---------------------------------------------------------------------------- the summary table

# The readable summary's metrics: the report's headline ones and log Z (the z-loss mechanism).
SUMMARY_HEADLINE = (F.FINAL_EVAL_LOSS, F.SPIKE_SCORE_GRAD_NORM, F.MAX_GRAD_NORM, F.MAX_ATTN_LOGIT,
                    F.FINAL_LOG_Z)


def _with_lr(summary: pd.DataFrame) -> bool:
    return "lr" in summary.columns and summary["lr"].nunique(dropna=False) > 1


def summary_headline(summary: pd.DataFrame, metrics: Sequence[str] = SUMMARY_HEADLINE) -> pd.DataFrame:
    """The raw columns of the readable summary of a `summary_by_arm` frame: arm, lr (when several),
    n_runs, n_diverged, diverged_steps, then `<metric>_mean` and `<metric>_sd` per metric it has."""
    keep = ["arm", *(["lr"] if _with_lr(summary) else []), "n_runs", "n_diverged", "diverged_steps"]
    for metric in metrics:
        keep += [c for c in (f"{metric}_mean", f"{metric}_sd") if c in summary.columns]
    return summary[[c for c in keep if c in summary.columns]].reset_index(drop=True)


def _mean_sd(mean: Any, sd: Any) -> str:
    """"4.73 ± 0.0764"; the mean alone without an sd (one seed); NA without a mean."""
    if _missing(mean):
        return NA
    return fmt_sig(mean) if _missing(sd) else f"{fmt_sig(mean)} ± {fmt_sig(sd)}"


def _diverged_summary(row: Mapping[str, Any]) -> str:
    """"0", or "1 (s1@120)": how many runs diverged, and which at what step."""
    n = int(row["n_diverged"])
    steps = row.get("diverged_steps")
    return f"{n} ({steps})" if n and not _missing(steps) and steps else str(n)


def format_summary_table(summary: pd.DataFrame, fmt: str = "markdown",
                         metrics: Sequence[str] = SUMMARY_HEADLINE) -> str:
    """The readable per-arm summary: arm, lr (when several), runs, diverged, and per headline metric
    its mean ± sd over seeds under a human header with its unit ("Final eval loss (CE, nats)").
    csv: the raw values of those columns (`summary_headline`)."""
    _check_fmt(fmt)
    head = summary_headline(summary, metrics)
    if fmt == "csv":
        return to_csv(head)
    shown = [m for m in metrics if f"{m}_mean" in head.columns]
    header = ["arm", *(["lr"] if "lr" in head.columns else []), "runs", "diverged",
              *(S.axis_label(m) for m in shown)]
    rows = []
    for r in head.to_dict("records"):
        cells = [str(r["arm"]), *([format_value("lr", r["lr"])] if "lr" in head.columns else []),
                 str(int(r["n_runs"])), _diverged_summary(r)]
        rows.append(cells + [_mean_sd(r[f"{m}_mean"], r.get(f"{m}_sd")) for m in shown])
    note = ["cells: mean ± sd over the seeds that finished or diverged (a diverged run's loss counts "
            "at its loss at init); every metric's mean, sd and n: summary_full.csv"]
    table = render_markdown(header, rows) if fmt == "markdown" else render_latex(header, rows)
    return table + _note_lines(note, fmt)


def write_summary_tables(summary: pd.DataFrame, out_dir: str | os.PathLike[str]) -> list[Path]:
    """summary.md / .tex (readable: `format_summary_table`), summary.csv (its raw values) and
    summary_full.csv (every column of the `summary_by_arm` frame), atomically; returns the paths."""
    out = Path(out_dir)
    paths = []
    for fmt in FORMATS:
        path = out / f"summary.{EXTENSIONS[fmt]}"
        atomic_write_text(path, format_summary_table(summary, fmt))
        paths.append(path)
    full = out / "summary_full.csv"
    atomic_write_text(full, to_csv(summary))
    return paths + [full]


# --------------------------------------------------------------------------- the lead-lag table

LEADLAG_HEADER = ("arm", "signal", "spikes judged", "preceded", "first", "at the spike step",
                  "median lead (steps)", "leading layer (share)", "cadence")


def _cadence_cell(steps: Any) -> str:
    """"every step", "every 10 steps"; NA when unknown."""
    return NA if _missing(steps) else "every " + ("step" if steps == 1 else f"{float(steps):g} steps")


def _layer_cell(row: Mapping[str, Any]) -> str:
    """"3 (75%)": the layer that led most often among the spikes the signal preceded."""
    if _missing(row["leading_layer"]):
        return NA
    return f"{int(row['leading_layer'])} ({L.pct(row['layer_share'])})"


def leadlag_rows(summary: pd.DataFrame) -> list[list[str]]:
    """Display cells of a `leadlag.summarize(by="arm")` frame, the signals an arm logged."""
    rows = []
    for r in summary[summary["logged"].astype(bool)].to_dict("records"):
        judged = int(r["n"])
        rows.append([str(r["arm"]), str(r["name"]), str(judged),
                     L.pct(r["preceded"]) if judged else NA, L.pct(r["first"]) if judged else NA,
                     L.pct(r["same_step"]) if judged else NA,
                     NA if _missing(r["median_lead"]) else f"{float(r['median_lead']):g}",
                     _layer_cell(r), _cadence_cell(r["cadence"])])
    return rows


def leadlag_notes(summary: pd.DataFrame, horizon: int, z: float) -> list[str]:
    """How to read the table, and the signals each arm lacked (plain text, unescaped)."""
    notes = [f"preceded: share of the loss spikes the signal could be judged at (a baseline and a sample "
             f"in the {horizon} steps before) where it left its range (more than {z:g} robust sigma) "
             f"before the spike; first: where it left first, ahead of the spike; at the spike step: "
             f"where it left at the spike's own step (it rose with the loss); the lead of a sampled "
             f"signal is quantised by its cadence (docs/leadlag.md)"]
    lacking: dict[tuple[str, ...], list[str]] = {}
    for arm, g in summary.groupby("arm", sort=False):
        if missing := tuple(L.not_logged(g)):
            lacking.setdefault(missing, []).append(str(arm))
    n_arms = summary["arm"].nunique()
    for missing, arms in lacking.items():
        where = "any arm" if len(arms) == n_arms > 1 else ", ".join(arms)
        notes.append(f"not logged in {where}: {', '.join(missing)}")
    return notes


def format_leadlag_table(summary: pd.DataFrame, fmt: str = "markdown", *, horizon: int = L.HORIZON,
                         z: float = L.Z) -> str:
    """The readable lead-lag table (arm | signal | spikes judged | preceded | first | at the spike
    step | median lead | leading layer (share) | cadence) with its notes; csv: every column of the
    summary, raw."""
    _check_fmt(fmt)
    if fmt == "csv":
        return to_csv(summary)
    rows = leadlag_rows(summary)
    table = render_markdown(LEADLAG_HEADER, rows) if fmt == "markdown" else render_latex(LEADLAG_HEADER, rows)
    return table + _note_lines(leadlag_notes(summary, horizon, z), fmt)


def write_leadlag_tables(summary: pd.DataFrame, out_dir: str | os.PathLike[str], *, horizon: int = L.HORIZON,
                         z: float = L.Z) -> list[Path]:
    """leadlag.md / .tex (readable) and leadlag.csv (every column), atomically; returns the paths."""
    out = Path(out_dir)
    paths = []
    for fmt in FORMATS:
        path = out / f"leadlag.{EXTENSIONS[fmt]}"
        atomic_write_text(path, format_leadlag_table(summary, fmt, horizon=horizon, z=z))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------- writing

def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file next to `path` (readable like any file: 0644), then
    `os.replace` it into place, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tables(frames: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike[str],
                 formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `name.md`, `name.tex` and `name.csv` for every frame, atomically; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        _check_fmt(fmt)
    paths = []
    for name, df in frames.items():
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"table name must be a plain file name, got {name!r}")
        for fmt in formats:
            path = out / f"{name}.{EXTENSIONS[fmt]}"
            atomic_write_text(path, render(df, fmt))
            paths.append(path)
    return paths
