"""Non-finite values: a NaN in the gradients (loss still finite) marks the run diverged at its
step, found at the next read-out; in a grid, an arm that blows up (lr 1e30) is recorded diverged
at its step while the other arm finishes, and the report's runs table and summary show it.

A NaN in the loss itself: tests/stability/test_train.py::test_nan_marks_the_run_diverged_at_its_step.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from ablations.runner import LocalRunner
from ablations.spec import parse_spec
from reports.load import load_grid
from reports.report import build_report
from stability import metric_names as M
from stability.config import load_config
from stability.train import Trainer

LOG = 5


def test_nan_in_the_gradients_only_is_divergence_at_its_step(tmp_path, torch_threads):
    """Step 7's gradients are poisoned after a finite forward: diverged at 7, found by the read-out
    that ends at step 9 (log_every 5), nothing logged for step 7 or later."""
    cfg = load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp_path}/mlflow.db"', f'train.checkpoint_dir="{tmp_path}/ck"',
        "data.max_bytes=300000", "train.threads=1", "train.steps=20", f"train.log_every={LOG}"])
    trainer = Trainer(cfg, progress=False)
    real_step = Trainer.train_step

    def poisoned(self, step):
        hook = None
        if step == 7:
            hook = self.model.lm_head.weight.register_hook(lambda g: g * float("nan"))
        try:
            real_step(self, step)
        finally:
            if hook is not None:
                hook.remove()

    trainer.train_step = poisoned.__get__(trainer)
    result = trainer.run()
    assert (result.status, result.diverged_at_step, result.steps) == ("diverged", 7, 10)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["status"] == "diverged" and run.data.tags["diverged_at_step"] == "7"
    for key in (M.TRAIN_LOSS, M.GRAD_NORM):
        assert sorted(m.step for m in client.get_metric_history(result.run_id, key)) == list(range(7))
    assert all(torch.isfinite(torch.tensor(m.value)) for m in client.get_metric_history(
        result.run_id, M.TRAIN_LOSS))


@pytest.fixture(scope="module")
def diverging_grid(tmp_path_factory):
    """Arms `ok` and `huge` (lr 1e30, no warmup: after step 0's update every weight is ~1e30 and
    step 1's forward overflows), one seed, 10 steps, one worker at a time on one thread."""
    root = tmp_path_factory.mktemp("nan_grid")
    spec = parse_spec({
        "name": "blowup", "preset": "olmo2-tiny", "baseline": "ok", "seeds": [0],
        "base": {"train": {"log_every": LOG, "eval_every": 0, "eval_batches": 1},
                 "data": {"max_bytes": 300000}},
        "budget": {"steps": 10},
        "arms": {"ok": {}, "huge": {"optim": {"lr": 1e30}, "schedule": {"warmup_steps": 0}}}})
    uri = f"sqlite:///{root}/mlflow.db"
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "cpu_count", lambda: 1)  # one worker thread, as on a 1-core machine
    try:
        runner = LocalRunner(spec, jobs=1, tracking_uri=uri, runs_dir=root / "runs", progress=False)
    finally:
        mp.undo()
    outcome = runner.run()
    return spec, runner, uri, root, outcome


def test_a_diverging_arm_is_a_result_and_the_grid_goes_on(diverging_grid):
    spec, runner, uri, _, outcome = diverging_grid
    assert outcome.status == "finished", outcome  # diverged is a result, not a failure
    by_arm = {c.arm: c for c in spec.cells()}
    assert outcome.results == {by_arm["ok"].cell_id: "finished", by_arm["huge"].cell_id: "diverged"}
    result = json.loads((runner.cell_dir(by_arm["huge"]) / "result.json").read_text())
    assert (result["diverged_at_step"], result["steps"]) == (1, LOG)  # found at the first read-out
    client = MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["status"] == "diverged" and run.data.tags["diverged_at_step"] == "1"
    assert [m.step for m in client.get_metric_history(result["run_id"], M.TRAIN_LOSS)] == [0]
    ok = json.loads((runner.cell_dir(by_arm["ok"]) / "result.json").read_text())
    assert sorted(m.step for m in client.get_metric_history(ok["run_id"], M.TRAIN_LOSS)) == list(range(10))


def test_the_report_lists_the_diverged_run_and_its_step(diverging_grid, tmp_path):
    _, _, uri, _, _ = diverging_grid
    grid = load_grid("blowup", uri)
    report = build_report(grid, tmp_path / "report", formats=(), n_boot=200)
    runs = pd.read_csv(tmp_path / "report" / "tables" / "runs.csv")
    rows = {r.arm: r for r in runs.itertuples()}
    assert rows["huge"].status == "diverged" and rows["huge"].diverged_at_step == 1
    assert rows["ok"].status == "finished" and pd.isna(rows["ok"].diverged_at_step)
    md = (tmp_path / "report" / "tables" / "runs.md").read_text()
    assert "| huge | 0 | 1e+30 | diverged | 1 |" in md
    assert "1 finished, 1 diverged" in report.summary
    assert "Diverged: huge seed 0 lr 1e+30 at step 1." in report.summary
