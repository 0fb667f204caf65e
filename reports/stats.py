"""Paired statistics on the `runs` frame: arm vs baseline, Holm, LR sensitivity, per-arm summaries.

Conventions (docs/reference.md sections 5 and 6):

- Pairing. Seed s of every arm shares data order and init, so arms are compared with the baseline
  per seed: `diff = arm - baseline`. When the runs hold several learning rates, pairs are matched
  on (seed, lr); `compare_arms` gives one row per lr by default. Differences are on the raw values
  (growth exponents included). Duplicate runs of one (arm, seed, lr): a finished one wins over
  diverged, running, failed; then the later row.
- Direction. `frames.DIRECTIONS` declares per metric whether lower or higher is better, or
  neither. Only a metric with a direction gets seeds counted as better / tied / worse and a
  probability of improvement (the share of seeds strictly better: a tie is a tie, not half a win).
- Diverged runs are results, never dropped. For loss-like metrics (`LOSS_METRICS`) a diverged run
  counts as its `loss_at_init`; for any other metric it contributes its value as logged (NaN makes
  the pair unusable and is reported in the note; inf is kept: rank-based statistics handle it).
- failed and running runs have no result: they are left out of pairs and counted (`n_excluded`,
  and the note names them).
- `diverged_at_step` is a metric too: a run that never diverged counts as diverging at +inf, so
  it is compared by ranks (Wilcoxon, probability of improvement); its means are NaN as soon as one
  side has a run that never diverged, and the note says "arm diverged in 2/3 seeds, baseline 0/3".
- Smallest sample for a test (`MIN_PAIRS`): the exact two-sided Wilcoxon signed-rank p-value of n
  non-zero differences is at least 2 / 2**n, which is 0.0625 for n = 5 and 0.031 for n = 6, so
  below 6 non-zero differences it can never reach 0.05 and no p-value is reported. The paired t
  test reaches any p-value once it has one degree of freedom (n = 2), leaning fully on normality.
  A row with too few pairs has no p-value and no per-row note about it (a small grid would say
  so on every row): `too_few_pairs` finds those rows, so a report can say it once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from reports import frames as F
from stability import store

LOSS_METRICS = (F.FINAL_EVAL_LOSS, F.BEST_EVAL_LOSS, F.FINAL_TRAIN_LOSS)
DIVERGENCE = F.DIVERGED_AT_STEP
DEFAULT_METRICS = (F.FINAL_EVAL_LOSS, F.BEST_EVAL_LOSS, F.FINAL_TRAIN_LOSS, F.SPIKE_SCORE_LOSS,
                   F.SPIKE_SCORE_GRAD_NORM, F.MAX_GRAD_NORM, F.MAX_ATTN_LOGIT, F.FINAL_LOG_Z, F.GROWTH_ACT,
                   F.GROWTH_GRAD, DIVERGENCE)
SUMMARY_METRICS = tuple(m for m in DEFAULT_METRICS if m != DIVERGENCE)

# which way is better (declared per metric in frames.DIRECTIONS); closer to zero only on request
LOWER, HIGHER, CLOSER_TO_ZERO = F.LOWER, F.HIGHER, "closer_to_zero"

TESTS = ("wilcoxon", "ttest")
MIN_PAIRS = {"wilcoxon": 6, "ttest": 2}  # see the module docstring
RESULT_STATUSES = store.RESULTS  # runs that ended with a result
_STATUS_PREFERENCE = {"finished": 0, "diverged": 1, "running": 2, "failed": 3}

COMPARE_COLUMNS = ("arm", "metric", "lr", "direction", "test", "n_pairs", "n_excluded", "n_diverged_arm",
                   "n_diverged_base", "diverged_steps", "diverged_steps_base", "base_mean", "arm_mean",
                   "mean_diff", "median_diff", "ci_low", "ci_high", "p_value", "p_holm", "p_improve",
                   "n_better", "n_ties", "n_worse", "note")
COUNT_COLUMNS = ("n_better", "n_ties", "n_worse")  # Int64, NA for a metric without a direction
FOREST_COLUMNS = ("arm", "metric", "lr", "direction", "mean_diff", "ci_low", "ci_high", "p_holm")
PAIR_COLUMNS = ("seed", "lr", "base", "arm", "diff", "base_status", "arm_status")


# ----------------------------------------------------------------------------------------- basics

def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.

    NaN entries are returned as NaN and do not count in the number of tests m.
    """
    p = np.asarray(list(pvalues) if not isinstance(pvalues, np.ndarray) else pvalues, dtype=float)
    flat = p.ravel()
    out = flat.copy()
    idx = np.flatnonzero(~np.isnan(flat))
    m = idx.size
    if m:
        order = idx[np.argsort(flat[idx], kind="stable")]
        adjusted = np.maximum.accumulate(flat[order] * np.arange(m, 0, -1))
        out[order] = np.minimum(adjusted, 1.0)
    return out.reshape(p.shape)


def paired_diff(base: np.ndarray, arm: np.ndarray) -> np.ndarray:
    """`arm - base`, with equal values (inf vs inf included) giving 0 rather than NaN."""
    base, arm = np.asarray(base, dtype=float), np.asarray(arm, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(base == arm, 0.0, arm - base)


def bootstrap_ci(diffs: Sequence[float], n_boot: int = 10_000, ci: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `diffs` (vectorised; NaN if n < 2 or any non-finite)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _rank_safe(d: np.ndarray) -> np.ndarray:
    """Replace +-inf by +-(largest finite |d| + 1): same signs and ranks of |d|, finite numbers."""
    finite = np.abs(d[np.isfinite(d)])
    big = (finite.max() if finite.size else 0.0) + 1.0
    return np.where(np.isinf(d), np.sign(d) * big, d)


def paired_test(base: Sequence[float], arm: Sequence[float], test: str = "wilcoxon") -> tuple[float, str]:
    """Two-sided paired test of arm vs base: (p-value, note). p is NaN, with the reason, when untestable.

    wilcoxon: `scipy.stats.wilcoxon` on the differences (zeros dropped, scipy's default);
    ttest: `scipy.stats.ttest_rel(arm, base)`.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    base, arm = np.asarray(base, dtype=float), np.asarray(arm, dtype=float)
    d = paired_diff(base, arm)
    n = d.size
    if n < MIN_PAIRS[test]:
        return np.nan, f"too few seeds (n={n}) for {test}"
    if np.all(d == 0):
        return np.nan, "all differences zero"
    if test == "wilcoxon":
        nonzero = int(np.count_nonzero(d))
        if nonzero < MIN_PAIRS[test]:
            return np.nan, f"too few non-zero differences ({nonzero} of n={n}) for wilcoxon"
        note = f"{n - nonzero} zero difference(s) dropped by wilcoxon" if nonzero < n else ""
        return float(sps.wilcoxon(_rank_safe(d)).pvalue), note
    if not np.all(np.isfinite(d)):
        return np.nan, "non-finite values (diverged runs): no t-test, use wilcoxon"
    if np.all(d == d[0]):
        return np.nan, "constant differences: t-test undefined"
    return float(sps.ttest_rel(arm, base).pvalue), ""


def _oriented(base: np.ndarray, arm: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(base, arm) turned so that lower is better."""
    if direction == CLOSER_TO_ZERO:
        return np.abs(base), np.abs(arm)
    if direction == LOWER:
        return base, arm
    if direction == HIGHER:
        return -base, -arm
    raise ValueError(f"direction must be {LOWER!r}, {HIGHER!r} or {CLOSER_TO_ZERO!r}, got {direction!r}")


def improvement_counts(base: Sequence[float], arm: Sequence[float],
                       direction: str = LOWER) -> tuple[int, int, int]:
    """(better, tied, worse): pairs where the arm beats, equals or trails the baseline.

    Equal values tie, inf vs inf included (two runs that never diverged are a tie).
    """
    base, arm = _oriented(np.asarray(base, dtype=float), np.asarray(arm, dtype=float), direction)
    better, tied = int((arm < base).sum()), int((arm == base).sum())
    return better, tied, int(base.size) - better - tied


def prob_improvement(base: Sequence[float], arm: Sequence[float], direction: str = LOWER) -> float:
    """Share of pairs where the arm is strictly better than the baseline (a tie is not a win, not
    half of one: see `improvement_counts` for the ties). NaN when empty."""
    better, tied, worse = improvement_counts(base, arm, direction)
    n = better + tied + worse
    return better / n if n else np.nan


# ------------------------------------------------------------------------------------ run values

def runs_frame(runs: pd.DataFrame | F.GridData) -> pd.DataFrame:
    """The typed runs frame, one run per (arm, seed, lr) (`_dedupe`)."""
    return _dedupe(F.typed_runs(runs.runs if isinstance(runs, F.GridData) else runs))


def baseline_of(runs: pd.DataFrame | F.GridData) -> str | None:
    """The GridData's baseline arm (a bare runs frame has none)."""
    return runs.baseline if isinstance(runs, F.GridData) else None


def _n_lrs(runs: pd.DataFrame) -> int:
    return int(runs[F.LR].dropna().nunique())


def arm_order(runs: pd.DataFrame, baseline: str | None) -> list[str]:
    """Arms as `GridData.arms` orders them: the baseline first, then first appearance."""
    return F.GridData(name="", runs=runs, baseline=baseline).arms


def _dedupe(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per (arm, seed, lr): prefer finished, then diverged, running, failed; then the last."""
    rank = runs[F.STATUS].map(_STATUS_PREFERENCE).fillna(len(_STATUS_PREFERENCE))
    r = runs.assign(_rank=rank.to_numpy(), _pos=np.arange(len(runs)))
    r = r.sort_values(["_rank", "_pos"], ascending=[True, False])
    r = r.drop_duplicates([F.ARM, F.SEED, F.LR]) if len(r) else r
    return r.sort_values("_pos").drop(columns=["_rank", "_pos"])


def divergence_step(runs: pd.DataFrame) -> pd.Series:
    """Step of divergence per run (diverged_at_step, else last_step); +inf for runs that did not diverge."""
    step = runs[F.DIVERGED_AT_STEP].astype("float64").fillna(runs[F.LAST_STEP].astype("float64"))
    return step.where(runs[F.STATUS] == "diverged", np.inf)


def run_values(runs: pd.DataFrame, metric: str) -> pd.Series:
    """The value each run contributes to statistics on `metric` (same index as `runs`).

    Loss-like metrics: a diverged run counts as its `loss_at_init`. `diverged_at_step`: see
    `divergence_step`. Anything else: the value as logged.
    """
    if metric == DIVERGENCE:
        return divergence_step(runs)
    if metric not in runs.columns:
        return pd.Series(np.nan, index=runs.index, dtype="float64")
    values = pd.to_numeric(runs[metric], errors="coerce").astype("float64")
    if metric in LOSS_METRICS:
        values = values.where(runs[F.STATUS] != "diverged", runs[F.LOSS_AT_INIT])
    return values


def _label(row: Mapping[str, Any], with_lr: bool) -> str:
    seed = "s?" if pd.isna(row[F.SEED]) else f"s{int(row[F.SEED])}"
    return f"{seed}/lr{row[F.LR]:g}" if with_lr else seed


def _diverged_steps(runs: pd.DataFrame, with_lr: bool) -> str:
    """"s1@120, s2@80" for the diverged runs in `runs` ("s1@?" when the step is unknown)."""
    div = runs[runs[F.STATUS] == "diverged"]
    steps = divergence_step(div)
    return ", ".join(f"{_label(row, with_lr)}@{'?' if np.isnan(st) else int(st)}"
                     for (_, row), st in zip(div.iterrows(), steps))


def _select_lr(runs: pd.DataFrame, lr: float | None) -> pd.DataFrame:
    if lr is None:
        return runs
    return runs[np.isclose(runs[F.LR].to_numpy(dtype=float), lr, rtol=1e-9, atol=0.0)]


# ------------------------------------------------------------------------------------- pairing

@dataclass
class _Match:
    """Baseline and arm runs matched on seed (and lr), before any metric is chosen."""

    base: pd.DataFrame  # the paired baseline runs, one row per pair
    arm: pd.DataFrame  # the paired arm runs, same order
    seed: np.ndarray
    lr: np.ndarray
    excluded: list[str]  # failed / running runs: "arm s2 (failed)"
    unpaired: list[str]  # result runs without a partner: "baseline s0"


def _match(runs: pd.DataFrame, baseline: str, arm: str) -> _Match:
    """Match the (deduped) baseline and arm runs of `runs`; failed / running runs are left out."""
    with_lr = _n_lrs(runs) > 1
    keys = [F.SEED, F.LR] if with_lr else [F.SEED]
    sides, excluded, gone = {}, [], {}
    for side, name in (("base", baseline), ("arm", arm)):
        r = runs[runs[F.ARM] == name]
        ok = r[F.STATUS].isin(RESULT_STATUSES) & r[F.SEED].notna()
        labels = [_label(row, with_lr) for _, row in r[~ok].iterrows()]
        gone[side] = set(labels)
        who = "baseline" if side == "base" else "arm"
        excluded += [f"{who} {lab} ({st})" for lab, st in zip(labels, r.loc[~ok, F.STATUS])]
        sides[side] = r[ok].reset_index(drop=True)
    index = {side: sides[side][keys].assign(**{f"_{side}": np.arange(len(sides[side]))}) for side in sides}
    merged = index["base"].merge(index["arm"], on=keys, how="outer", indicator=True)
    merged = merged.sort_values(keys).reset_index(drop=True)
    unpaired = []  # a partner that was excluded is reported as excluded, not here
    for (_, row), where in zip(merged.iterrows(), merged["_merge"]):
        who, other = ("baseline", "arm") if where == "left_only" else ("arm", "base")
        if where != "both" and _label(row, with_lr) not in gone[other]:
            unpaired.append(f"{who} {_label(row, with_lr)}")
    both = merged[merged["_merge"] == "both"]
    lrs = runs[F.LR].dropna().unique()
    lr = both[F.LR].to_numpy(dtype=float) if with_lr else \
        np.full(len(both), float(lrs[0]) if lrs.size else np.nan)
    return _Match(base=sides["base"].iloc[both["_base"].to_numpy(dtype=int)].reset_index(drop=True),
                  arm=sides["arm"].iloc[both["_arm"].to_numpy(dtype=int)].reset_index(drop=True),
                  seed=both[F.SEED].to_numpy(), lr=lr, excluded=excluded, unpaired=unpaired)


def _pairs_of(match: _Match, metric: str) -> pd.DataFrame:
    """The `PAIR_COLUMNS` frame of a match for one metric."""
    base = run_values(match.base, metric).to_numpy(dtype=float)
    arm = run_values(match.arm, metric).to_numpy(dtype=float)
    return pd.DataFrame({"seed": pd.array(match.seed, dtype="Int64"), "lr": match.lr, "base": base,
                         "arm": arm, "diff": paired_diff(base, arm),
                         "base_status": match.base[F.STATUS].to_numpy(),
                         "arm_status": match.arm[F.STATUS].to_numpy()}, columns=list(PAIR_COLUMNS))


def paired_frame(runs: pd.DataFrame | F.GridData, metric: str, baseline: str, arm: str,
                 lr: float | None = None) -> pd.DataFrame:
    """Per-seed pairs of `arm` vs `baseline` on `metric`: columns `PAIR_COLUMNS` (diff = arm - base).

    Pairs match on seed, and on (seed, lr) when the runs (after `lr` selection) hold several LRs.
    Values follow `run_values` (a diverged run counts as its loss at init for loss-like metrics,
    and as its step of divergence / +inf for `diverged_at_step`). failed and running runs are not
    paired; they are listed in `frame.attrs["excluded"]` ("arm s2 (failed)"), runs without a
    partner in `frame.attrs["unpaired"]`. Pairs with a NaN value are kept (diff NaN).
    """
    match = _match(_select_lr(runs_frame(runs), lr), baseline, arm)
    pairs = _pairs_of(match, metric)
    pairs.attrs["excluded"], pairs.attrs["unpaired"] = match.excluded, match.unpaired
    return pairs


# ----------------------------------------------------------------------------------- comparing

def _directions(lower_is_better: Mapping[str, bool | str | None] | None) -> dict[str, str | None]:
    """`frames.DIRECTIONS` updated with user overrides: True -> lower, False -> higher, "abs" -> |x|,
    None -> no direction."""
    out = dict(F.DIRECTIONS)
    for metric, value in (lower_is_better or {}).items():
        if value is None:
            out[metric] = None
        elif value in ("abs", CLOSER_TO_ZERO):
            out[metric] = CLOSER_TO_ZERO
        elif isinstance(value, bool | np.bool_):
            out[metric] = LOWER if value else HIGHER
        else:
            raise ValueError(f"lower_is_better[{metric!r}] must be True, False, 'abs' or None, got {value!r}")
    return out


def _improvement(base: np.ndarray, arm: np.ndarray, direction: str | None) -> dict[str, Any]:
    """p_improve and the better / tied / worse counts of one row (NaN / NA without a direction)."""
    if direction is None:
        return {"p_improve": np.nan, **{c: pd.NA for c in COUNT_COLUMNS}}
    counts = improvement_counts(base, arm, direction)
    return {"p_improve": prob_improvement(base, arm, direction), **dict(zip(COUNT_COLUMNS, counts))}


def _effect(base: np.ndarray, arm: np.ndarray, d: np.ndarray, metric: str, *, n_boot: int, ci: float,
            seed: int) -> dict[str, float]:
    """Means, mean / median difference and its bootstrap CI (NaN where undefined)."""
    nan = np.nan
    undefined = metric == DIVERGENCE and not np.all(np.isfinite(np.r_[base, arm]))  # a run never diverged
    with np.errstate(invalid="ignore"):
        means = {"base_mean": float(np.mean(base)) if base.size and not undefined else nan,
                 "arm_mean": float(np.mean(arm)) if arm.size and not undefined else nan,
                 "mean_diff": float(np.mean(d)) if d.size and not undefined else nan,
                 "median_diff": float(np.median(d)) if d.size else nan}
    low, high = (nan, nan) if undefined else bootstrap_ci(d, n_boot=n_boot, ci=ci, seed=seed)
    return {**means, "ci_low": low, "ci_high": high}


def _context(group: pd.DataFrame, baseline: str, arm: str, lr: float | None) -> dict[str, Any]:
    """What every metric's row of one (arm, lr) shares: the match and the divergence columns."""
    with_lr = _n_lrs(group) > 1
    arm_runs, base_runs = group[group[F.ARM] == arm], group[group[F.ARM] == baseline]
    if lr is None:
        lrs = group[F.LR].dropna().unique()
        lr = float(lrs[0]) if lrs.size == 1 else np.nan  # NaN: pooled over several LRs
    return {"match": _match(group, baseline, arm), "row": {
        "arm": arm, "lr": float(lr),
        "n_diverged_arm": int((arm_runs[F.STATUS] == "diverged").sum()),
        "n_diverged_base": int((base_runs[F.STATUS] == "diverged").sum()),
        "diverged_steps": _diverged_steps(arm_runs, with_lr),
        "diverged_steps_base": _diverged_steps(base_runs, with_lr)}}


def _compare_one(context: dict[str, Any], metric: str, *, test: str, directions: Mapping[str, str | None],
                 n_boot: int, ci: float, seed: int) -> dict[str, Any]:
    """One row of `compare_arms` (p_holm filled in by the caller)."""
    direction = directions.get(metric)
    match: _Match = context["match"]
    pairs = _pairs_of(match, metric)
    usable = pairs[pairs["base"].notna() & pairs["arm"].notna()]
    base, armv, d = (usable[c].to_numpy(dtype=float) for c in ("base", "arm", "diff"))
    n = d.size
    p, test_note = paired_test(base, armv, test)
    if n < MIN_PAIRS[test]:
        test_note = ""  # said once per report (see `too_few_pairs`), not on every row
    notes: list[str] = []
    if metric == DIVERGENCE:
        notes.append(f"arm diverged in {int(np.isfinite(armv).sum())}/{n} seeds, "
                     f"baseline {int(np.isfinite(base).sum())}/{n}")
    elif metric in LOSS_METRICS and (usable[["base_status", "arm_status"]] == "diverged").to_numpy().any():
        notes.append("diverged runs count as loss_at_init")
    if n == 0:
        notes.append("no data" if pairs.empty else "no pair with values on both sides")
    elif len(pairs) > n:
        notes.append(f"{len(pairs) - n} pair(s) with missing values")
    notes.append(test_note)
    if metric != DIVERGENCE and n >= 2 and not np.all(np.isfinite(d)):
        notes.append("non-finite values: no CI")
    if match.excluded:
        notes.append("excluded " + ", ".join(match.excluded))
    if match.unpaired:
        notes.append("no partner: " + ", ".join(match.unpaired))
    if metric not in directions:
        notes.append("direction unknown: pass lower_is_better for p_improve")
    return {
        **context["row"], "metric": metric, "direction": direction or "", "test": test,
        "n_pairs": n, "n_excluded": len(match.excluded),
        **_effect(base, armv, d, metric, n_boot=n_boot, ci=ci, seed=seed),
        "p_value": p, "p_holm": np.nan, **_improvement(base, armv, direction),
        "note": "; ".join(x for x in notes if x),
    }


def compare_arms(runs: pd.DataFrame | F.GridData, baseline: str | None = None,
                 metrics: Sequence[str] = DEFAULT_METRICS, *, test: str = "wilcoxon", n_boot: int = 10_000,
                 ci: float = 0.95, seed: int = 0, lower_is_better: Mapping[str, bool | str] | None = None,
                 by_lr: bool = True) -> pd.DataFrame:
    """Every arm against `baseline`, per metric (and per lr): a tidy frame with `COMPARE_COLUMNS`.

    Per row: n_pairs (pairs with values on both sides), n_excluded (failed / running runs),
    diverged counts and steps ("s1@120") of both sides, means, mean and median of the paired
    differences (arm - baseline), the percentile bootstrap CI of the mean difference (`n_boot`
    resamples, level `ci`, a fresh `numpy.random.default_rng(seed)` per row so a row does not
    depend on the others), the two-sided paired p-value (`test`: "wilcoxon" or "ttest"), p_holm
    (Holm across the arms within each metric and lr), n_better / n_ties / n_worse and p_improve
    (the share of seeds where the arm is strictly better), only for a metric with a direction
    (`frames.DIRECTIONS` updated with `lower_is_better` {metric: True | False | "abs" | None}),
    and a note (why a p-value is missing, excluded runs, ...; too few pairs for the test is left to
    `too_few_pairs`). `baseline` defaults to the GridData's. With several LRs and `by_lr`, one row
    per lr; with `by_lr=False` pairs are pooled over (seed, lr). The columns `FOREST_COLUMNS` are
    what a forest plot needs (see `forest_frame`).
    """
    if isinstance(runs, F.GridData):
        baseline = baseline if baseline is not None else runs.baseline
    frame = runs_frame(runs)
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    known = sorted(set(frame[F.ARM].dropna()))
    if baseline not in known:
        raise ValueError(f"baseline {baseline!r} is not an arm of the runs {known}")
    arms = [a for a in arm_order(frame, baseline) if a != baseline]
    directions = _directions(lower_is_better)
    lrs: list[float | None] = [None]
    if by_lr and _n_lrs(frame) > 1:
        lrs = sorted(float(x) for x in frame[F.LR].dropna().unique())
    contexts = {lr: [_context(_select_lr(frame, lr), baseline, arm, lr) for arm in arms] for lr in lrs}
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        for lr in lrs:
            block = [_compare_one(context, metric, test=test, n_boot=n_boot, ci=ci, seed=seed,
                                  directions=directions) for context in contexts[lr]]
            for row, p in zip(block, holm([r["p_value"] for r in block])):
                row["p_holm"] = float(p)
            rows += block
    out = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    for col in ("n_pairs", "n_excluded", "n_diverged_arm", "n_diverged_base"):
        out[col] = out[col].astype("int64")
    for col in COUNT_COLUMNS:
        out[col] = out[col].astype("Int64")
    return out


def too_few_pairs(compare: pd.DataFrame) -> pd.Series:
    """Rows of a `compare_arms` frame without a p-value because they have pairs, but fewer than
    their test needs (`MIN_PAIRS`)."""
    need = compare["test"].map(MIN_PAIRS)
    return (compare["n_pairs"] > 0) & (compare["n_pairs"] < need)


def forest_frame(compare: pd.DataFrame) -> pd.DataFrame:
    """The rows of a `compare_arms` frame a forest plot can draw (finite mean_diff), `FOREST_COLUMNS`."""
    keep = np.isfinite(compare["mean_diff"].to_numpy(dtype=float))
    return compare.loc[keep, list(FOREST_COLUMNS)].reset_index(drop=True)


# ------------------------------------------------------------------------------------ summaries

def summary_by_arm(runs: pd.DataFrame | F.GridData, metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Per arm (and lr, when the runs hold several): status counts and mean / sd / n of each metric.

    Columns: arm, lr, n_runs, n_finished, n_diverged, n_failed, n_running, diverged_steps, then
    `<metric>_mean`, `<metric>_sd`, `<metric>_n` per metric. Diverged runs stay in (counted, with
    their steps; loss-like metrics take their loss_at_init as in `run_values`); failed and running
    runs are counted but carry no metric values. `diverged_at_step` is not averaged (see the counts).
    """
    frame = runs_frame(runs)
    with_lr = _n_lrs(frame) > 1
    metrics = [m for m in metrics if m != DIVERGENCE]
    rows = []
    for arm in arm_order(frame, baseline_of(runs)):
        a = frame[frame[F.ARM] == arm]
        groups = [(lr, a[a[F.LR] == lr]) for lr in sorted(a[F.LR].dropna().unique())] if with_lr else \
            [(float(a[F.LR].iloc[0]) if a[F.LR].notna().any() else np.nan, a)]
        for lr, g in groups:
            row: dict[str, Any] = {"arm": arm, "lr": lr, "n_runs": len(g)}
            for status in ("finished", "diverged", "failed", "running"):
                row[f"n_{status}"] = int((g[F.STATUS] == status).sum())
            row["diverged_steps"] = _diverged_steps(g, False)
            ok = g[g[F.STATUS].isin(RESULT_STATUSES)]
            for metric in metrics:
                v = run_values(ok, metric).dropna().to_numpy(dtype=float)
                with np.errstate(invalid="ignore"):
                    row[f"{metric}_mean"] = float(v.mean()) if v.size else np.nan
                    row[f"{metric}_sd"] = float(v.std(ddof=1)) if v.size >= 2 else np.nan
                row[f"{metric}_n"] = int(v.size)
            rows.append(row)
    return pd.DataFrame(rows)
