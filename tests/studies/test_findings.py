"""The findings table's numbers against explicit computations: paired differences, a paired
t-test from scipy, Holm by hand, the verdicts; the measures against hand-made series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reports import frames as F
from studies import measures as X
from studies.catalog import DOWN, STUDIES, UP, Finding, Study
from studies.findings import findings_markdown, study_findings, verdict
from tests.reports.factories import synthetic_grid


def test_grad_excursion_is_the_largest_ratio_to_the_previous_window_median():
    s = pd.Series([1.0, 3.0] * 50 + [10.0, 2.0, 1.0], index=np.arange(103))
    # the median of the 100 steps before step 100 is 2 (50 ones, 50 threes): 10 / 2
    assert X.excursion(s) == pytest.approx(5.0)
    assert np.isnan(X.excursion(s.iloc[:100], window=100))  # no point has a full window
    assert X.excursion(s.iloc[:9]) == pytest.approx(3.0)  # window n/3: 3 / median(1, 3, 1)


def test_findings_rows_equal_a_hand_computed_paired_comparison():
    grid = synthetic_grid(arms=("olmo2", "no_qk_norm", "olmo0424"), seeds=(0, 1, 2, 3),
                          arm_offset={"no_qk_norm": 0.1, "olmo0424": 0.3})
    study = Study("synthetic", "Synthetic", "claim", (
        Finding("no_qk_norm", X.FINAL_EVAL_LOSS, UP, "paper a"),
        Finding("olmo0424", X.FINAL_EVAL_LOSS, DOWN, "paper b"),
        Finding("no_qk_norm", X.MAX_GRAD_NORM, UP, "paper c")), ())
    table = study_findings(study, grid, n_boot=500)
    r = grid.runs.set_index([F.ARM, F.SEED])
    p_raw = []
    for (arm, col), row in zip([("no_qk_norm", F.FINAL_EVAL_LOSS), ("olmo0424", F.FINAL_EVAL_LOSS),
                                ("no_qk_norm", F.MAX_GRAD_NORM)], table.itertuples()):
        base = r.loc["olmo2"][col].sort_index().to_numpy(float)
        other = r.loc[arm][col].sort_index().to_numpy(float)
        assert row.n_pairs == 4
        assert row.mean_diff == pytest.approx((other - base).mean())
        assert row.ci_low <= row.mean_diff <= row.ci_high
        p = stats.ttest_rel(other, base).pvalue
        assert row.p_value == pytest.approx(p)
        p_raw.append(p)
    order = np.argsort(p_raw)  # Holm by hand: (m - rank) * p, running max, capped at 1
    adj, running = np.empty(3), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * p_raw[i]))
        adj[i] = running
    assert table["p_holm"].to_numpy() == pytest.approx(adj)
    # the loss offset is +0.1 and +0.3: the first is the paper's direction, the second is not
    assert table["verdict"].str.startswith("yes").tolist()[0]
    assert table["verdict"].iloc[1].startswith("no")
    md = findings_markdown(table, {"synthetic": "Synthetic"})
    assert md.count("\n") == 2 + 3 and "paper b" in md


def test_a_finding_at_an_lr_the_grid_did_not_sweep_has_no_row():
    grid = synthetic_grid(arms=("a", "b"), seeds=(0, 1, 2), lrs=(1e-3, 1e-1), baseline="a")
    study = Study("s", "S", "claim", (Finding("b", X.FINAL_EVAL_LOSS, UP, "at 0.1", lr=1e-1),
                                       Finding("b", X.FINAL_EVAL_LOSS, UP, "at 0.3", lr=3e-1)), ())
    assert study_findings(study, grid, n_boot=200)["paper"].tolist() == ["at 0.1"]


def test_lr_sensitivity_pairs_per_seed_over_the_sweep():
    grid = synthetic_grid(arms=("a", "b"), seeds=(0, 1, 2), lrs=(1e-3, 1e-2, 1e-1), baseline="a",
                          arm_offset={"b": 0.2})
    values = X.LR_SENSITIVITY.values(grid)
    assert sorted(values["arm"].unique()) == ["a", "b"] and len(values) == 6
    runs = grid.runs[grid.runs[F.ARM] == "a"]
    one = runs[runs[F.SEED] == 0].sort_values(F.LR)
    loss = np.fmin(one[F.FINAL_EVAL_LOSS].to_numpy(float), one[F.LOSS_AT_INIT].to_numpy(float))
    got = values[(values["arm"] == "a") & (values["seed"] == 0)]["value"].item()
    assert got == pytest.approx(np.mean(loss - loss.min()))


def test_layer_means_take_the_late_half_of_every_layer():
    grid = synthetic_grid(arms=("a", "b"), seeds=(0,), baseline="a", n_layers=4)
    got = X.UPDATE_RMS.per_run(grid)
    assert got.to_numpy() == pytest.approx(np.full(2, np.mean([0.5, 0.6, 0.7, 0.8])))


@pytest.mark.parametrize(("diff", "p", "expect", "want"), [
    (0.3, 0.01, UP, "yes"), (0.3, 0.2, UP, "yes, n.s."), (-0.3, 0.01, UP, "no"),
    (-0.3, 0.01, DOWN, "yes"), (0.0, np.nan, UP, "no difference"), (np.nan, np.nan, UP, "no data")])
def test_verdicts(diff, p, expect, want):
    assert verdict(diff, p, expect) == want


def test_every_study_names_arms_of_its_grid():
    from ablations.spec import load_spec

    for study in STUDIES:
        spec = load_spec(study.name)
        assert {f.arm for f in study.findings} <= set(spec.arms) - {spec.baseline}, study.name
        assert all(f.lr is None or f.lr in spec.lrs for f in study.findings), study.name
        assert len(spec.seeds) >= 3, study.name


@pytest.mark.parametrize("width", ["double", "single"])
def test_findings_figure_reads_as_words_with_one_legend(width):
    from reports.style import WIDTHS
    from studies.figure import findings_figure
    from tests.reports.test_figure_text import RAW_COLUMN, RAW_KEY, texts

    grid = synthetic_grid(arms=("olmo2", "no_qk_norm"), seeds=(0, 1, 2), arm_offset={"no_qk_norm": 0.2},
                          spike_steps={("no_qk_norm", s, 3e-3): [120] for s in (0, 1, 2)})
    study = Study("synthetic", "Synthetic", "claim", (
        Finding("no_qk_norm", X.FINAL_EVAL_LOSS, UP, "a"),
        Finding("no_qk_norm", X.SPIKE_SCORE_GRAD, UP, "b")), ())  # the baseline's score is 0
    table = study_findings(study, grid, n_boot=200)
    fig = findings_figure(table, {"synthetic": "Synthetic"}, width=width)
    shown = texts(fig)
    assert not [t for t in shown if RAW_KEY.search(t) or RAW_COLUMN.search(t)]
    assert any(t.startswith("baseline 0, arm +") for t in shown)  # no relative change from 0: said
    assert len(fig.legends) == 1 and fig.get_figwidth() == pytest.approx(WIDTHS[width])
