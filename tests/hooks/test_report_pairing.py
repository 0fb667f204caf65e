"""Runs trained through the HF callback are paired by `stability report` and drawn by
`stability dashboard` as a grid's cells are: 2 arms x 3 seeds in one experiment."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from reports import frames as F
from reports.dashboard import write_dashboard
from reports.load import load_grid
from reports.report import build_report
from stability.hooks.hf import StabilityCallback
from tests.hooks.helpers import MODELS

STEPS = 12


@pytest.mark.slow
def test_two_arms_three_seeds_through_the_hf_callback_make_a_paired_report(corpus, mlflow_uri, tmp_path):
    rows = corpus.train_batch(0, 48).input_ids
    data = [{"input_ids": r, "labels": r} for r in rows]
    for arm, clip in (("clip", 1.0), ("no_clip", 0.0)):  # the first arm is the report's baseline
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            args = TrainingArguments(output_dir=str(tmp_path / f"{arm}{seed}"), max_steps=STEPS,
                                     learning_rate=3e-2, per_device_train_batch_size=4, logging_steps=4,
                                     report_to="none", save_strategy="no", use_cpu=True,
                                     disable_tqdm=True, max_grad_norm=clip, seed=seed)
            callback = StabilityCallback(tracking_uri=mlflow_uri, experiment="hooks-pairs", arm=arm,
                                         every=4, spike_window=6)  # judged from step 6 on
            Trainer(model=MODELS["llama"](), args=args, train_dataset=data, callbacks=[callback]).train()
    grid = load_grid("hooks-pairs", mlflow_uri)
    assert sorted(grid.arms) == ["clip", "no_clip"] and len(grid.runs) == 6
    assert set(grid.runs[F.STATUS]) == {"finished"}
    report = build_report(grid, tmp_path / "report", widths=("double",), formats=("png",))
    compare = report.compare
    assert set(compare["arm"]) == {"no_clip"}
    paired = compare.set_index("metric")["n_pairs"]
    for metric in (F.MAX_GRAD_NORM, F.SPIKE_SCORE_GRAD_NORM, F.MAX_ATTN_LOGIT):  # no eval in this loop
        assert paired[metric] == 3, metric  # seed for seed
    row = compare[compare["metric"] == F.MAX_GRAD_NORM].iloc[0]
    per_seed = grid.runs.set_index([F.ARM, F.SEED])[F.MAX_GRAD_NORM]
    want = sum(per_seed[("no_clip", s)] - per_seed[("clip", s)] for s in (0, 1, 2)) / 3
    assert row["mean_diff"] == pytest.approx(want)
    assert (tmp_path / "report" / "figures" / "grad_norm_curves.png").is_file()
    index = write_dashboard(grid, tmp_path / "dashboard")
    assert index.is_file() and "no_clip" in index.read_text()
