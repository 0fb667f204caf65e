"""The spike-response study's own numbers (studies/rewind_study.py) against hand-built grids."""

from __future__ import annotations

import pandas as pd
import pytest

from ablations.spec import load_spec
from reports import frames as F
from stability import metric_names as M
from studies import rewind_study as R
from tests.reports.factories import synthetic_grid


def with_skips(grid: F.GridData, skipped: dict[str, list[int]]) -> F.GridData:
    rows = [{F.RUN_ID: rid, "step": s, "metric": M.OPTIM_STEP_SKIPPED, "value": 1.0}
            for rid, steps in skipped.items() for s in steps]
    grid.series = pd.concat([grid.series, pd.DataFrame(rows)], ignore_index=True)
    return grid


def test_eval_loss_at_takes_the_first_evaluation_at_or_after_the_step():
    grid = synthetic_grid(arms=("nothing", "rewind"), seeds=(0,), steps=300, eval_every=50,
                          baseline="nothing")
    values = R.eval_loss_at(200).values(grid).set_index("arm")["value"]
    ev = grid.metric(M.EVAL_LOSS)
    for arm, rid in zip(grid.runs[F.ARM], grid.runs[F.RUN_ID]):
        mine = ev[(ev[F.RUN_ID] == rid) & (ev["step"] >= 200)].sort_values("step")
        assert values[arm] == pytest.approx(mine["value"].iloc[0])
    assert R.eval_loss_at(10_000).values(grid)["value"].isna().all()


def test_costs_count_retrained_steps_and_skips_on_bad_batches():
    grid = synthetic_grid(arms=("nothing", "skip_step", "rewind"), seeds=(0, 1), steps=300,
                          baseline="nothing")
    rid = dict(zip(zip(grid.runs[F.ARM], grid.runs[F.SEED]), grid.runs[F.RUN_ID]))
    with_skips(grid, {rid[("skip_step", 0)]: [150, 151, 170], rid[("skip_step", 1)]: [150]})
    rewinds = {rid[("rewind", 0)]: pd.DataFrame({"detected_at": [159, 179], "to_step": [130, 150]}),
               rid[("rewind", 1)]: pd.DataFrame({"detected_at": [159], "to_step": [130]})}
    table = R.costs(grid, rewinds, bad_batches={150, 151, 152}).set_index("arm")
    assert table.index.tolist() == ["nothing", "skip_step", "rewind"]
    assert table.loc["rewind", "rewinds"] == 1.5
    # 300 steps kept + (159 + 1 - 130) + (179 + 1 - 150) for seed 0, + 30 for seed 1
    assert table.loc["rewind", "steps_trained"] == (360 + 330) / 2
    assert table.loc["nothing", "steps_trained"] == 300
    assert table.loc["skip_step", "updates_skipped"] == 2.0
    assert table.loc["skip_step", "skipped_on_bad_batches"] == 1.5  # 150, 151 | 150
    assert table.loc["nothing", "updates_skipped"] == 0
    final = grid.runs.set_index([F.ARM, F.SEED])[F.FINAL_EVAL_LOSS]
    assert table.loc["skip_step", "final_eval_loss"] == pytest.approx(final.loc["skip_step"].mean())
    assert "| rewind | 2 |" in R.cost_markdown(table.reset_index())


def test_the_study_names_arms_of_its_grid():
    spec = load_spec(R.GRID)
    assert spec.baseline == "nothing" and len(spec.seeds) >= 3
    assert {f.arm for f in R.STUDY.findings} <= set(spec.arms)
    assert spec.base["data"]["bad_batches"]
