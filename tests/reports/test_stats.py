"""reports.stats: Holm, paired tests, bootstrap, probability of improvement, divergence, LR sensitivity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reports import frames as F
from reports import lr_sensitivity as LS
from reports import stats as S
from tests.reports.factories import synthetic_grid

LR = 3e-3


@pytest.fixture(scope="module")
def clean() -> F.GridData:
    """6 seeds, no divergence; no_qk_norm slightly and olmo0424 clearly worse."""
    return synthetic_grid(seeds=range(6), arm_offset={"no_qk_norm": 0.004, "olmo0424": 0.03})


@pytest.fixture(scope="module")
def div() -> F.GridData:
    """3 seeds; no_qk_norm diverges in s1 (step 120) and s2 (80), olmo0424 in s0 (60), olmo2 in s0 (100)."""
    return synthetic_grid(diverged={("no_qk_norm", 1, LR): 120, ("no_qk_norm", 2, LR): 80,
                                    ("olmo0424", 0, LR): 60, ("olmo2", 0, LR): 100})


@pytest.fixture(scope="module")
def swept() -> F.GridData:
    """3 seeds x 3 LRs; olmo0424 worse by 0.1, no_qk_norm diverges at lr 0.1 seed 0."""
    return synthetic_grid(seeds=(0, 1, 2), lrs=(1e-3, 1e-2, 1e-1), arm_offset={"olmo0424": 0.1},
                          diverged={("no_qk_norm", 0, 1e-1): 40})


def _runs(rows: list[dict]) -> pd.DataFrame:
    """A runs frame from a few columns (the rest NA)."""
    return F.typed_runs(pd.DataFrame(rows))


def _pair_runs(base: list[float], arm: list[float], metric: str = F.FINAL_EVAL_LOSS) -> pd.DataFrame:
    rows = []
    for name, values in (("base", base), ("arm", arm)):
        rows += [{F.ARM: name, F.SEED: i, F.LR: 1e-3, F.STATUS: "finished", metric: v, F.LOSS_AT_INIT: 10.0}
                 for i, v in enumerate(values)]
    return _runs(rows)


# ---------------------------------------------------------------------------------------------- Holm

def test_holm_hand_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN passes through and is not counted: m = 4 as above
    out = S.holm([0.01, np.nan, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(out, [0.03, np.nan, 0.06, 0.06, 0.02])
    # capped at 1: 0.4*3 = 1.2, 0.6*2 = 1.2, 0.7
    np.testing.assert_allclose(S.holm([0.4, 0.6, 0.7]), [1.0, 1.0, 1.0])
    assert np.isnan(S.holm([np.nan])).all() and S.holm([]).size == 0
    np.testing.assert_allclose(S.holm([0.2]), [0.2])


def _statsmodels_holm(pvals: np.ndarray) -> np.ndarray:
    """statsmodels.stats.multitest.multipletests(method="holm"), written out."""
    sortind = np.argsort(pvals)
    pvals_sorted = pvals[sortind]
    ntests = len(pvals)
    pvals_corrected_raw = pvals_sorted * np.arange(ntests, 0, -1)
    pvals_corrected = np.maximum.accumulate(pvals_corrected_raw)
    pvals_corrected[pvals_corrected > 1] = 1
    out = np.empty_like(pvals_corrected)
    out[sortind] = pvals_corrected
    return out


def test_holm_matches_statsmodels_formula():
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 13):
        p = rng.uniform(0, 0.2, size=n)
        np.testing.assert_allclose(S.holm(p), _statsmodels_holm(p))
    p = rng.uniform(0, 0.2, size=6)
    with_nan = np.insert(p, [1, 4], np.nan)
    np.testing.assert_allclose(S.holm(with_nan)[~np.isnan(with_nan)], _statsmodels_holm(p))


# ------------------------------------------------------------------------------------- paired tests

def test_min_pairs_is_where_exact_wilcoxon_can_reach_005():
    # exact two-sided minimum p is 2 / 2**n: 0.0625 at n=5, 0.03125 at n=6
    assert sps.wilcoxon(np.arange(1.0, 6.0)).pvalue == pytest.approx(0.0625)
    assert sps.wilcoxon(np.arange(1.0, 7.0)).pvalue == pytest.approx(0.03125)
    assert S.MIN_PAIRS == {"wilcoxon": 6, "ttest": 2}


def test_wilcoxon_hand_value_and_scipy():
    base = [4.0] * 7
    arm = [4.5, 3.8, 4.3, 4.8, 4.1, 4.4, 3.4]  # diffs 0.5 -0.2 0.3 0.8 0.1 0.4 -0.6
    # ranks of |d|: 0.1:1 0.2:2 0.3:3 0.4:4 0.5:5 0.6:6 0.8:7; negative ranks 2 + 6 = 8 = W.
    # subsets of {1..7} with sum <= 8: 1+1+1+2+2+3+4+5+5 = 24 of 128, two-sided p = 48/128
    row = S.compare_arms(_pair_runs(base, arm), "base", [F.FINAL_EVAL_LOSS]).iloc[0]
    assert row["n_pairs"] == 7
    assert row["p_value"] == pytest.approx(0.375)
    d = np.array(arm) - np.array(base)
    assert row["p_value"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-12)
    assert row["mean_diff"] == pytest.approx(1.3 / 7)
    assert row["median_diff"] == pytest.approx(0.3)
    assert row["p_improve"] == pytest.approx(2 / 7)  # lower is better: seeds 1 and 6
    assert row["note"] == ""


def test_compare_p_values_equal_scipy_on_the_differences(clean):
    grid = clean
    for test in ("wilcoxon", "ttest"):
        out = S.compare_arms(grid, metrics=[F.FINAL_EVAL_LOSS, F.MAX_GRAD_NORM], test=test, n_boot=200)
        assert len(out) == 4 and set(out["arm"]) == {"no_qk_norm", "olmo0424"}
        for _, row in out.iterrows():
            pairs = S.paired_frame(grid, row["metric"], "olmo2", row["arm"])
            assert len(pairs) == 6
            if test == "wilcoxon":
                expected = sps.wilcoxon(pairs["arm"] - pairs["base"]).pvalue
            else:
                expected = sps.ttest_rel(pairs["arm"], pairs["base"]).pvalue
            assert row["p_value"] == pytest.approx(expected, rel=1e-12)
        for _, block in out.groupby("metric"):
            np.testing.assert_allclose(block["p_holm"], S.holm(block["p_value"]))
    olmo0424 = out[(out["arm"] == "olmo0424") & (out["metric"] == F.FINAL_EVAL_LOSS)].iloc[0]
    assert olmo0424["mean_diff"] == pytest.approx(0.03, abs=0.01)
    assert olmo0424["p_value"] < 0.01 and olmo0424["p_improve"] == 0.0  # the t-test rows


def test_bootstrap_ci_contains_mean_and_is_reproducible(clean):
    grid = clean
    a = S.compare_arms(grid, metrics=[F.FINAL_EVAL_LOSS], seed=7)
    b = S.compare_arms(grid, metrics=[F.FINAL_EVAL_LOSS], seed=7)
    c = S.compare_arms(grid, metrics=[F.FINAL_EVAL_LOSS], seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"], c["ci_low"])
    for _, row in a.iterrows():
        assert row["ci_low"] < row["mean_diff"] < row["ci_high"]
        d = S.paired_frame(grid, F.FINAL_EVAL_LOSS, "olmo2", row["arm"])["diff"]
        assert (row["ci_low"], row["ci_high"]) == S.bootstrap_ci(d, n_boot=10_000, ci=0.95, seed=7)
    # a wider level gives a wider interval; too few values or non-finite ones give NaN
    lo90, hi90 = S.bootstrap_ci([0.1, 0.3, 0.2, 0.5, 0.4], ci=0.90)
    lo99, hi99 = S.bootstrap_ci([0.1, 0.3, 0.2, 0.5, 0.4], ci=0.99)
    assert lo99 <= lo90 < 0.3 < hi90 <= hi99
    assert np.isnan(S.bootstrap_ci([0.2])).all() and np.isnan(S.bootstrap_ci([0.2, np.inf])).all()


def test_probability_of_improvement_counts_ties_as_ties():
    # lower: seed0 better, seeds 1 and 3 tie, seed2 worse: a tie is no half win
    assert S.improvement_counts([1, 2, 3, 4], [0.5, 2, 3.5, 4], S.LOWER) == (1, 2, 1)
    assert S.prob_improvement([1, 2, 3, 4], [0.5, 2, 3.5, 4], S.LOWER) == 0.25
    assert S.improvement_counts([1, 2, 3, 4], [0.5, 2, 3.5, 4], S.HIGHER) == (1, 2, 1)
    assert S.prob_improvement([1, 2, 3], [0, 1, 5], S.HIGHER) == pytest.approx(1 / 3)
    # closer to zero: |0.1| < |-0.3| better, |-0.2| == |0.2| tie
    assert S.improvement_counts([-0.3, 0.2], [0.1, -0.2], S.CLOSER_TO_ZERO) == (1, 1, 0)
    # divergence step, later / never (inf) is better; never vs never ties
    assert S.improvement_counts([100, np.inf, np.inf], [np.inf, np.inf, 50], S.HIGHER) == (1, 1, 1)
    assert S.improvement_counts([0.0, 0.0], [0.0, 0.0], S.LOWER) == (0, 2, 0)
    assert S.prob_improvement([0.0, 0.0], [0.0, 0.0], S.LOWER) == 0.0
    assert np.isnan(S.prob_improvement([], [], S.LOWER))
    with pytest.raises(ValueError):
        S.improvement_counts([1], [2], "up")


def test_direction_declarations_and_overrides():
    assert F.DIRECTIONS[F.FINAL_EVAL_LOSS] == S.LOWER and F.DIRECTIONS[S.DIVERGENCE] == S.HIGHER
    assert F.DIRECTIONS[F.MAX_GRAD_NORM] is None and F.DIRECTIONS[F.GROWTH_ACT] is None
    assert set(F.SUMMARY_COLUMNS) <= set(F.DIRECTIONS)  # every summary declares one
    runs = _pair_runs([0.3, -0.2, 0.1], [-0.1, 0.4, 0.1], metric=F.GROWTH_ACT)
    row = S.compare_arms(runs, "base", [F.GROWTH_ACT]).iloc[0]  # declared: no direction, no note
    assert row["direction"] == "" and np.isnan(row["p_improve"]) and pd.isna(row["n_better"])
    assert pd.isna(row["n_ties"]) and row["note"] == ""
    row = S.compare_arms(runs, "base", [F.GROWTH_ACT], lower_is_better={F.GROWTH_ACT: "abs"}).iloc[0]
    assert row["direction"] == S.CLOSER_TO_ZERO
    assert (row["n_better"], row["n_ties"], row["n_worse"]) == (1, 1, 1)
    row = S.compare_arms(runs, "base", [F.GROWTH_ACT], lower_is_better={F.GROWTH_ACT: False}).iloc[0]
    assert row["direction"] == S.HIGHER and row["p_improve"] == pytest.approx(1 / 3)
    row = S.compare_arms(runs, "base", [F.GROWTH_ACT], lower_is_better={F.GROWTH_ACT: True}).iloc[0]
    assert row["p_improve"] == pytest.approx(1 / 3)  # seed0 better, seed1 worse, seed2 tie
    row = S.compare_arms(_pair_runs([1, 2, 3], [0, 3, 3], metric=F.N_SPIKES), "base", ["n_spikes"]).iloc[0]
    assert (row["n_better"], row["n_ties"], row["n_worse"]) == (1, 1, 1)
    row = S.compare_arms(_pair_runs([1, 2], [0, 3]), "base", [F.FINAL_EVAL_LOSS],
                         lower_is_better={F.FINAL_EVAL_LOSS: None}).iloc[0]
    assert np.isnan(row["p_improve"]) and "direction unknown" not in row["note"]
    runs = _pair_runs([1, 2], [2, 3]).assign(custom=[1.0, 2.0, 2.0, 3.0])
    row = S.compare_arms(runs, "base", ["custom"]).iloc[0]
    assert np.isnan(row["p_improve"]) and "direction unknown" in row["note"]
    with pytest.raises(ValueError):
        S.compare_arms(runs, "base", ["custom"], lower_is_better={"custom": "up"})


def test_too_few_seeds_note_instead_of_p_value(clean):
    grid = clean.runs[clean.runs[F.SEED] < 2]
    out = S.compare_arms(grid, "olmo2", metrics=[F.FINAL_EVAL_LOSS], n_boot=500)
    assert out["p_value"].isna().all() and out["p_holm"].isna().all()
    assert (out["note"] == "").all() and S.too_few_pairs(out).all()  # said once, by the report
    assert (out["n_pairs"] == 2).all() and out["mean_diff"].notna().all()
    # the t-test runs from 2 pairs
    tt = S.compare_arms(grid, "olmo2", metrics=[F.FINAL_EVAL_LOSS], test="ttest", n_boot=500)
    pairs = S.paired_frame(grid, F.FINAL_EVAL_LOSS, "olmo2", "olmo0424")
    assert tt.loc[1, "p_value"] == pytest.approx(sps.ttest_rel(pairs["arm"], pairs["base"]).pvalue)
    assert not S.too_few_pairs(tt).any()
    with pytest.raises(ValueError):
        S.compare_arms(grid, "olmo2", metrics=[F.FINAL_EVAL_LOSS], test="mannwhitney")


def test_all_zero_and_zero_differences_notes():
    row = S.compare_arms(_pair_runs([1.0] * 6, [1.0] * 6), "base", [F.FINAL_EVAL_LOSS]).iloc[0]
    assert np.isnan(row["p_value"]) and row["note"] == "all differences zero"
    assert row["mean_diff"] == 0 and row["p_improve"] == 0 and (row["n_ties"], row["n_better"]) == (6, 0)
    # 7 pairs, one zero difference: wilcoxon drops it and says so
    arm = np.array([1.25, 1.5, 1.75, 0.625, 2.0, 2.25, 1.0])  # exact binary differences, one zero
    row = S.compare_arms(_pair_runs([1.0] * 7, list(arm)), "base", [F.FINAL_EVAL_LOSS]).iloc[0]
    # 6 non-zero differences, |d| ranks 1..6, the negative one (-0.375) has rank 2: W = 2,
    # exact two-sided p = 2 * #{subsets of 1..6 with sum <= 2: {}, {1}, {2}} / 64 = 6/64
    assert row["p_value"] == pytest.approx(sps.wilcoxon(arm - 1.0).pvalue)
    assert row["p_value"] == pytest.approx(6 / 64)
    assert row["note"] == "1 zero difference(s) dropped by wilcoxon"
    # constant non-zero differences: no t-test
    row = S.compare_arms(_pair_runs([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]), "base", [F.FINAL_EVAL_LOSS],
                         test="ttest").iloc[0]
    assert np.isnan(row["p_value"]) and "constant differences" in row["note"]


# ------------------------------------------------------------------------------ diverged and failed

def test_diverged_run_pairs_at_loss_at_init_and_is_counted(div):
    runs = div.runs
    bad = runs[(runs[F.ARM] == "no_qk_norm") & (runs[F.SEED] == 1)].iloc[0]
    assert bad[F.STATUS] == "diverged" and np.isfinite(bad[F.FINAL_EVAL_LOSS])
    pairs = S.paired_frame(div, F.FINAL_EVAL_LOSS, "olmo2", "no_qk_norm")
    assert list(pairs["seed"]) == [0, 1, 2]
    assert pairs.loc[1, "arm"] == bad[F.LOSS_AT_INIT] != bad[F.FINAL_EVAL_LOSS]
    assert list(pairs["arm_status"]) == ["finished", "diverged", "diverged"]
    base1 = runs[(runs[F.ARM] == "olmo2") & (runs[F.SEED] == 1)][F.FINAL_EVAL_LOSS].iloc[0]
    assert pairs.loc[1, "diff"] == pytest.approx(bad[F.LOSS_AT_INIT] - base1)
    base0 = runs[(runs[F.ARM] == "olmo2") & (runs[F.SEED] == 0)].iloc[0]  # the diverged baseline run
    assert pairs.loc[0, "base"] == base0[F.LOSS_AT_INIT] and pairs.loc[0, "base_status"] == "diverged"
    # other metrics keep the logged value
    attn = S.paired_frame(div, F.MAX_ATTN_LOGIT, "olmo2", "no_qk_norm")
    assert attn.loc[1, "arm"] == bad[F.MAX_ATTN_LOGIT]

    out = S.compare_arms(div, metrics=[F.FINAL_EVAL_LOSS, F.MAX_GRAD_NORM], n_boot=500)
    row = out[(out["arm"] == "no_qk_norm") & (out["metric"] == F.FINAL_EVAL_LOSS)].iloc[0]
    assert row["n_pairs"] == 3 and row["n_diverged_arm"] == 2 and row["n_diverged_base"] == 1
    assert row["diverged_steps"] == "s1@120, s2@80" and row["diverged_steps_base"] == "s0@100"
    assert row["arm_mean"] == pytest.approx(pairs["arm"].mean())
    assert row["mean_diff"] == pytest.approx(pairs["diff"].mean())
    # s0: ~4.0 - ~11.2 (baseline diverged), s1 and s2: ~11.2 - ~3.96
    assert row["mean_diff"] == pytest.approx((-7.2 + 7.2 + 7.2) / 3, abs=0.1)
    assert row["p_improve"] == pytest.approx(1 / 3)
    assert "diverged runs count as loss_at_init" in row["note"]
    # max grad norm of a diverged run is inf: kept, mean undefined (inf - inf), no CI
    row = out[(out["arm"] == "no_qk_norm") & (out["metric"] == F.MAX_GRAD_NORM)].iloc[0]
    assert row["n_pairs"] == 3 and row["arm_mean"] == np.inf and np.isnan(row["ci_low"])
    grad = S.paired_frame(div, F.MAX_GRAD_NORM, "olmo2", "no_qk_norm")
    assert list(np.isinf(grad["arm"])) == [False, True, True] and np.isinf(grad.loc[0, "base"])
    assert np.isnan(row["p_improve"]) and pd.isna(row["n_better"])  # max grad norm: no direction

    summary = S.summary_by_arm(div, [F.FINAL_EVAL_LOSS]).set_index("arm")
    s = summary.loc["no_qk_norm"]
    assert (s["n_runs"], s["n_finished"], s["n_diverged"], s["final_eval_loss_n"]) == (3, 1, 2, 3)
    assert s["diverged_steps"] == "s1@120, s2@80"
    assert s["final_eval_loss_mean"] == pytest.approx(pairs["arm"].mean())
    assert s["final_eval_loss_sd"] == pytest.approx(pairs["arm"].std(ddof=1))


def test_wilcoxon_with_infinite_values_matches_scipy():
    base = [1.0, 1.2, 1.1, 1.3, 1.0, 1.4]
    arm = [1.5, np.inf, 1.625, 1.25, 1.875, 2.0]
    row = S.compare_arms(_pair_runs(base, arm, F.MAX_GRAD_NORM), "base", [F.MAX_GRAD_NORM]).iloc[0]
    d = np.array(arm) - np.array(base)
    assert row["p_value"] == pytest.approx(sps.wilcoxon(d).pvalue)
    # only the sign and rank of inf matter: the largest positive difference
    assert row["p_value"] == pytest.approx(sps.wilcoxon(np.where(np.isinf(d), 10.0, d)).pvalue)
    assert row["p_value"] == pytest.approx(0.0625)  # W = 1 (rank of -0.05): 2 * 2/64
    assert row["mean_diff"] == np.inf and np.isnan(row["ci_low"]) and "no CI" in row["note"]


def test_divergence_step_metric(div):
    out = S.compare_arms(div, metrics=[S.DIVERGENCE], n_boot=200).set_index("arm")
    r = out.loc["no_qk_norm"]
    assert r["note"].startswith("arm diverged in 2/3 seeds, baseline 1/3")
    assert np.isnan(r["mean_diff"]) and np.isnan(r["ci_low"]) and np.isnan(r["base_mean"])
    # seed0: arm never vs base 100 -> better; seed1 and seed2: arm diverged, base never -> worse
    assert r["p_improve"] == pytest.approx(1 / 3)
    assert r["diverged_steps"] == "s1@120, s2@80" and r["diverged_steps_base"] == "s0@100"
    assert r["median_diff"] == -np.inf
    assert "too few seeds" not in r["note"] and S.too_few_pairs(out).all()
    r = out.loc["olmo0424"]
    # seed0: 60 vs 100 -> worse; seeds 1, 2: never vs never -> ties
    assert (r["n_better"], r["n_ties"], r["n_worse"]) == (0, 2, 1) and r["p_improve"] == 0
    assert r["note"].startswith("arm diverged in 1/3 seeds, baseline 1/3")
    pairs = S.paired_frame(div, S.DIVERGENCE, "olmo2", "olmo0424")
    assert list(pairs["arm"]) == [60.0, np.inf, np.inf] and list(pairs["diff"]) == [-40.0, 0.0, 0.0]
    # every run diverged on both sides: the steps have a mean difference
    rows = [{F.ARM: arm, F.SEED: seed, F.LR: LR, F.STATUS: "diverged", F.DIVERGED_AT_STEP: step}
            for arm, seed, step in (("a", 0, 100), ("a", 1, 50), ("b", 0, 40), ("b", 1, 70))]
    r = S.compare_arms(_runs(rows), "a", [S.DIVERGENCE], n_boot=200).iloc[0]
    assert r["mean_diff"] == pytest.approx(((40 - 100) + (70 - 50)) / 2) and r["base_mean"] == 75
    assert r["p_improve"] == 0.5 and r["note"].startswith("arm diverged in 2/2 seeds, baseline 2/2")
    assert (r["n_better"], r["n_ties"], r["n_worse"]) == (1, 0, 1)


def test_failed_and_running_runs_are_excluded_but_counted(clean):
    runs = clean.runs.copy()
    runs.loc[(runs[F.ARM] == "no_qk_norm") & (runs[F.SEED] == 2), F.STATUS] = "failed"
    runs.loc[(runs[F.ARM] == "olmo2") & (runs[F.SEED] == 3), F.STATUS] = "running"
    pairs = S.paired_frame(runs, F.FINAL_EVAL_LOSS, "olmo2", "no_qk_norm")
    assert list(pairs["seed"]) == [0, 1, 4, 5]
    assert pairs.attrs["excluded"] == ["baseline s3 (running)", "arm s2 (failed)"]
    assert pairs.attrs["unpaired"] == []  # partners of excluded runs are not reported twice
    out = S.compare_arms(runs, "olmo2", [F.FINAL_EVAL_LOSS], n_boot=200).set_index("arm")
    assert out.loc["no_qk_norm", "n_pairs"] == 4 and out.loc["no_qk_norm", "n_excluded"] == 2
    assert out.loc["olmo0424", "n_pairs"] == 5 and out.loc["olmo0424", "n_excluded"] == 1
    assert "excluded baseline s3 (running), arm s2 (failed)" in out.loc["no_qk_norm", "note"]
    assert S.too_few_pairs(out).all() and "too few" not in out.loc["no_qk_norm", "note"]  # 4 and 5 pairs
    summary = S.summary_by_arm(runs, [F.FINAL_EVAL_LOSS]).set_index("arm")
    assert summary.loc["no_qk_norm", "n_failed"] == 1 and summary.loc["olmo2", "n_running"] == 1
    assert summary.loc["olmo2", "final_eval_loss_n"] == 5 and summary.loc["olmo2", "n_runs"] == 6
    # a missing partner is reported
    pairs = S.paired_frame(runs[~((runs[F.ARM] == "olmo0424") & (runs[F.SEED] == 0))], F.FINAL_EVAL_LOSS,
                           "olmo2", "olmo0424")
    assert pairs.attrs["unpaired"] == ["baseline s0"]
    # a duplicate run of a (arm, seed, lr) cell: the finished one wins over a failed retry
    dup = pd.concat([runs, runs[(runs[F.ARM] == "olmo0424") & (runs[F.SEED] == 1)].assign(status="failed")])
    assert len(S.paired_frame(dup, F.FINAL_EVAL_LOSS, "olmo2", "olmo0424")) == 5


def test_several_lrs_pair_on_seed_and_lr(swept):
    out = S.compare_arms(swept, metrics=[F.FINAL_EVAL_LOSS], n_boot=200)
    assert list(out["lr"]) == [1e-3, 1e-3, 1e-2, 1e-2, 1e-1, 1e-1] and (out["n_pairs"] == 3).all()
    assert out.loc[4, "diverged_steps"] == "s0@40" and out.loc[4, "n_diverged_arm"] == 1
    assert (out.loc[[0, 2], "n_diverged_arm"] == 0).all()
    pooled = S.compare_arms(swept, metrics=[F.FINAL_EVAL_LOSS], n_boot=200, by_lr=False)
    assert pooled["lr"].isna().all() and (pooled["n_pairs"] == 9).all()
    assert pooled.loc[0, "diverged_steps"] == "s0/lr0.1@40"
    pairs = S.paired_frame(swept, F.FINAL_EVAL_LOSS, "olmo2", "olmo0424")
    assert len(pairs) == 9 and sorted(set(pairs["lr"])) == [1e-3, 1e-2, 1e-1]
    one = S.paired_frame(swept, F.FINAL_EVAL_LOSS, "olmo2", "olmo0424", lr=1e-2)
    assert len(one) == 3 and (one["lr"] == 1e-2).all()
    assert np.allclose(one["diff"], 0.1, atol=0.05)
    row = out[(out["arm"] == "olmo0424") & (out["lr"] == 1e-2)].iloc[0]
    assert row["mean_diff"] == pytest.approx(one["diff"].mean())
    summary = S.summary_by_arm(swept, [F.FINAL_EVAL_LOSS])
    assert len(summary) == 9 and list(summary["lr"][:3]) == [1e-3, 1e-2, 1e-1]


def test_forest_frame_and_errors(div):
    out = S.compare_arms(div, n_boot=200)
    assert tuple(out.columns) == S.COMPARE_COLUMNS
    assert len(out) == 2 * len(S.DEFAULT_METRICS)
    forest = S.forest_frame(out)
    assert tuple(forest.columns) == S.FOREST_COLUMNS
    assert np.isfinite(forest["mean_diff"]).all() and 0 < len(forest) < len(out)
    assert S.DIVERGENCE not in set(forest["metric"])  # a side that never diverged: no mean difference
    with pytest.raises(ValueError, match="baseline"):
        S.compare_arms(div.runs, "nope")
    with pytest.raises(ValueError, match="baseline"):
        S.compare_arms(div.runs)


# ---------------------------------------------------------------------------------- LR sensitivity

def _lr_table() -> pd.DataFrame:
    rows = []

    def add(arm, seed, lr, loss, status="finished"):
        rows.append({F.ARM: arm, F.SEED: seed, F.LR: lr, F.STATUS: status, F.FINAL_EVAL_LOSS: loss,
                     F.LOSS_AT_INIT: 10.0, F.DIVERGED_AT_STEP: 5 if status == "diverged" else None})

    # arm A
    add("A", 0, 1e-3, 4.0), add("A", 0, 1e-2, 3.0), add("A", 0, 1e-1, 3.5, "diverged")
    add("A", 1, 1e-3, 4.2), add("A", 1, 1e-2, 3.4), add("A", 1, 1e-1, 12.0)
    # arm B
    add("B", 0, 1e-3, 3.8), add("B", 0, 1e-2, 3.5), add("B", 0, 1e-1, np.nan)
    add("B", 1, 1e-3, 3.9), add("B", 1, 1e-2, 3.3), add("B", 1, 1e-1, 9.0)
    add("B", 2, 1e-3, 3.7), add("B", 2, 1e-2, np.nan, "failed"), add("B", 2, 1e-1, 5.0, "diverged")
    return _runs(rows)


def test_lr_sensitivity_hand_table():
    out = LS.lr_sensitivity(_lr_table(), n_boot=500).set_index("arm")
    # A s0: effective [4, 3, 10 (diverged -> init)], min 3: mean(1, 0, 7) = 8/3
    # A s1: effective [4.2, 3.4, 10 (12 capped at init)], min 3.4: mean(0.8, 0, 6.6) = 7.4/3
    a0, a1 = 8 / 3, 7.4 / 3
    assert out.loc["A", "sensitivity"] == pytest.approx((a0 + a1) / 2)  # 2.5667
    assert out.loc["A", "sensitivity_sd"] == pytest.approx(abs(a0 - a1) / np.sqrt(2))  # 0.1414
    # seed means per lr: 1e-3: 4.1, 1e-2: 3.2, 1e-1: 10
    assert out.loc["A", "optimal_lr"] == 1e-2 and out.loc["A", "best_loss"] == pytest.approx(3.2)
    assert (out.loc["A", "n_lrs"], out.loc["A", "n_seeds"], out.loc["A", "n_diverged"]) == (3, 2, 1)
    assert out.loc["A", "ci_low"] <= out.loc["A", "sensitivity"] <= out.loc["A", "ci_high"]
    # B s0: [3.8, 3.5, 10 (NaN loss -> init)]: mean(0.3, 0, 6.5) = 6.8/3
    # B s1: [3.9, 3.3, 9.0]: mean(0.6, 0, 5.7) = 6.3/3;  B s2 has a failed LR: left out
    b0, b1 = 6.8 / 3, 6.3 / 3
    assert out.loc["B", "sensitivity"] == pytest.approx((b0 + b1) / 2)  # 2.1833
    assert out.loc["B", "sensitivity_sd"] == pytest.approx(abs(b0 - b1) / np.sqrt(2))
    assert out.loc["B", "n_seeds"] == 2 and "s2 left out" in out.loc["B", "note"]
    # seed means per lr: 1e-3: (3.8+3.9+3.7)/3 = 3.8, 1e-2: (3.5+3.3)/2 = 3.4, 1e-1: (10+9+10)/3
    assert out.loc["B", "optimal_lr"] == 1e-2 and out.loc["B", "best_loss"] == pytest.approx(3.4)
    assert out.loc["B", "n_diverged"] == 1
    per_seed = LS.lr_sensitivity_per_seed(_lr_table()).set_index(["arm", "seed"])["sensitivity"]
    assert per_seed[("A", 0)] == pytest.approx(a0) and per_seed[("B", 1)] == pytest.approx(b1)
    eff = LS.effective_losses(_lr_table())
    assert eff[(eff["arm"] == "B") & (eff["seed"] == 2)]["lr"].tolist() == [1e-3, 1e-1]


def test_lr_sensitivity_single_lr_and_synthetic_bowl(clean, swept):
    single = LS.lr_sensitivity(clean, n_boot=100)
    assert single["sensitivity"].isna().all() and (single["n_lrs"] == 1).all()
    assert single["note"].str.contains("fewer than 2 LRs").all()
    # the factory's LR bowl has its minimum at 1e-2
    bowl = LS.lr_sensitivity(swept, n_boot=100).set_index("arm")
    assert (bowl["optimal_lr"] == 1e-2).all() and list(bowl.index) == ["olmo2", "no_qk_norm", "olmo0424"]
    # the diverged run (s0, lr 0.1) counts ~11.2 instead of ~4.2: +7/3 for s0, +7/9 on the mean
    extra = bowl.loc["no_qk_norm", "sensitivity"] - bowl.loc["olmo2", "sensitivity"]
    assert extra == pytest.approx(7 / 9, abs=0.1)
    assert bowl.loc["no_qk_norm", "n_diverged"] == 1 and (bowl["n_seeds"] == 3).all()
    # an offset shifts every LR equally: same sensitivity, within noise
    assert bowl.loc["olmo0424", "sensitivity"] == pytest.approx(bowl.loc["olmo2", "sensitivity"], abs=0.02)
