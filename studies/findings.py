"""The findings table: per finding, the paired difference arm - baseline over seeds, its
bootstrap CI, a paired t-test with Holm's correction over the study's findings, and whether
the difference points the way the paper's finding does.

A paired t-test, not the reports' default Wilcoxon: with 3 seeds the smallest two-sided Wilcoxon
p-value is 0.25 and with 5 it is 0.0625, so it could never call a difference significant here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports import frames as F
from reports.stats import bootstrap_ci, holm, paired_test
from reports.tables import fmt_p, fmt_sig, render_markdown
from studies.catalog import UP, Finding, Study

TEST = "ttest"
ALPHA = 0.05
COLUMNS = ("study", "arm", "baseline", "measure", "lr", "paper", "n_pairs", "base_mean", "arm_mean",
           "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "expected", "verdict")


def _pairs(values: pd.DataFrame, baseline: str, finding: Finding) -> pd.DataFrame:
    v = values
    if finding.lr is not None:
        v = v[np.isclose(v["lr"].astype(float), finding.lr)]
    base = v[v["arm"] == baseline].set_index("seed")["value"]
    arm = v[v["arm"] == finding.arm].set_index("seed")["value"]
    both = pd.DataFrame({"base": base, "arm": arm}).dropna()
    return both[np.isfinite(both["base"]) & np.isfinite(both["arm"])]


def verdict(mean_diff: float, p_holm: float, expect: str) -> str:
    """"yes" (significant, the paper's direction), "yes, n.s.", "no" (significant, the other way),
    "no, n.s.", "no difference" (every pair equal) or "no data"."""
    if not np.isfinite(mean_diff):
        return "no data"
    if mean_diff == 0:
        return "no difference"
    same = (mean_diff > 0) == (expect == UP)
    significant = np.isfinite(p_holm) and p_holm < ALPHA
    return ("yes" if same else "no") + ("" if significant else ", n.s.")


def paired_row(base_values: pd.Series, arm_values: pd.Series, n_boot: int, **labels) -> dict:
    """The numbers of one row from per-seed baseline and arm values (aligned, finite), plus
    `labels` (study, arm, baseline, measure, lr, paper, expected)."""
    base, arm = base_values, arm_values
    d = (arm - base).to_numpy(dtype=float)
    low, high = bootstrap_ci(d, n_boot=n_boot)
    p = paired_test(base, arm, TEST)[0] if len(d) and np.any(d != 0) else np.nan
    n = len(d)
    return {**labels, "n_pairs": n, "base_mean": float(base.mean()) if n else np.nan,
            "arm_mean": float(arm.mean()) if n else np.nan, "mean_diff": float(d.mean()) if n else np.nan,
            "ci_low": low, "ci_high": high, "p_value": p}


def findings_table(rows: list[dict]) -> pd.DataFrame:
    """`paired_row`s as a table (`COLUMNS`): Holm over them, and each row's verdict."""
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "verdict")])
    out["p_holm"] = holm(out["p_value"]) if len(out) else []
    out["verdict"] = [verdict(m, p, e) for m, p, e in zip(out["mean_diff"], out["p_holm"], out["expected"])]
    return out[list(COLUMNS)]


def study_findings(study: Study, grid: F.GridData, n_boot: int = 10_000) -> pd.DataFrame:
    """One row per finding of `study` (columns `COLUMNS`); a finding at a learning rate the grid
    did not sweep (the quick scale sweeps fewer) has no row."""
    baseline = grid.baseline
    swept = grid.runs[F.LR].dropna().astype(float).unique()
    rows, cache = [], {}
    for f in study.findings:
        if f.lr is not None and not np.isclose(f.lr, swept).any():
            continue
        if f.measure.name not in cache:
            cache[f.measure.name] = f.measure.values(grid)
        pairs = _pairs(cache[f.measure.name], baseline, f)
        rows.append(paired_row(pairs["base"], pairs["arm"], n_boot, study=study.name, arm=f.arm,
                               baseline=baseline, measure=f.measure.label, lr=f.lr, paper=f.paper,
                               expected=f.expect))
    return findings_table(rows)


EXPECT = {UP: "expect higher", "-": "expect lower"}


def _lr_text(lr: float | None) -> str:
    return "" if lr is None or not np.isfinite(lr) else f" at lr {lr:g}"


def findings_markdown(table: pd.DataFrame, titles: dict[str, str]) -> str:
    """The table a reader reads: paper | measured | same direction?"""
    header = ["study", "the paper reports", "we compare",
              "measured: arm - baseline (95% CI; baseline vs arm means)", "p (Holm)", "same direction?"]
    rows = []
    for r in table.itertuples(index=False):
        diff = (f"{fmt_sig(r.mean_diff)} (CI {fmt_sig(r.ci_low)} to {fmt_sig(r.ci_high)}; "
                f"{fmt_sig(r.base_mean)} vs {fmt_sig(r.arm_mean)}, n={r.n_pairs})"
                if np.isfinite(r.mean_diff) else "no data")
        rows.append([titles.get(r.study, r.study), r.paper,
                     f"{r.measure}{_lr_text(r.lr)}: {r.arm} vs {r.baseline} ({EXPECT[r.expected]})",
                     diff, fmt_p(r.p_holm), r.verdict])
    return render_markdown(header, rows)
