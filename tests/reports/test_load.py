"""`reports.load.load_grid` against real tiny trainings logged to a sqlite store, and the store
copied to another folder (another machine), a diverged run, and duplicate-step dedupe."""

from __future__ import annotations

import math
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ablations.spec import GRIDS_DIR, load_spec
from reports import frames as F
from reports import load_artifacts, load_metrics
from reports.load import load_grid
from stability import metric_names as M
from stability.config import load_config
from stability.spikes import EVENT_COLUMNS, SpikeEvent, events_to_frame
from stability.store import artifact_root_for
from stability.train import Trainer, train

GRID = "g"


def _cfg(tmp, arm: str, seed: int, parent: str, *overrides: str):
    return load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp}/mlflow.db"', f'tracking.experiment="{GRID}"',
        f'tracking.arm="{arm}"', f'tracking.parent_run_id="{parent}"',
        f'tracking.run_name="{GRID}/{arm}/s{seed}"', f'train.checkpoint_dir="{tmp}/runs/{arm}{seed}"',
        f"train.seed={seed}", "train.threads=1", "train.steps=20", "train.log_every=5", "train.eval_every=10",
        "train.batch_size=4", "train.seq_len=32", "train.eval_batches=2", "probes.every=5",
        "probes.attn_every=5", "data.max_bytes=200000", *overrides,
    ])


def _parent(uri: str, baseline: str) -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(GRID)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        GRID, artifact_location=artifact_root_for(uri))
    run = client.create_run(exp_id, run_name=GRID, tags={"stability.role": "grid", "baseline": baseline,
                                                         "grid": GRID})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    """Two arms (seed 0), plus a third run diverged by a NaN at step 6, under one parent run."""
    tmp = tmp_path_factory.mktemp("grid")
    uri = f"sqlite:///{tmp}/mlflow.db"
    parent = _parent(uri, "olmo2")
    threads = torch.get_num_threads()  # train.threads=1: a tiny model, and 2 cores shared with others
    try:
        results = {
            "olmo2": train(_cfg(tmp, "olmo2", 0, parent), progress=False),
            "no_qk_norm": train(_cfg(tmp, "no_qk_norm", 1, parent, "model.qk_norm=none"), progress=False),
        }
        trainer = Trainer(_cfg(tmp, "nan", 0, parent), progress=False)
        forward, calls = trainer.model.features, {"n": 0}

        def poisoned(*args, **kwargs):
            out = forward(*args, **kwargs)
            if not (torch.is_grad_enabled() and trainer.model.training):
                return out
            calls["n"] += 1
            if calls["n"] != 7:  # the 7th training forward is step 6
                return out
            return (out[0] * float("nan"), out[1]) if isinstance(out, tuple) else out * float("nan")

        trainer.model.features = poisoned
        results["nan"] = trainer.run()
    finally:
        torch.set_num_threads(threads)
    return tmp, uri, parent, results


def _check_grid(grid: F.GridData, uri: str, parent: str, results) -> None:
    client = MlflowClient(uri)
    assert grid.name == GRID and grid.parent_run_id == parent and grid.baseline == "olmo2"
    runs = grid.runs.set_index(F.RUN_ID)
    assert list(grid.runs.columns) == list(F.RUN_COLUMNS)
    assert sorted(runs.index) == sorted(r.run_id for r in results.values())
    assert grid.arms == ["olmo2", "no_qk_norm", "nan"]
    for arm, res in results.items():
        row = runs.loc[res.run_id]
        assert row[F.ARM] == arm
        assert row[F.RUN_NAME] == f"{GRID}/{arm}/s{row[F.SEED]}"
        assert row[F.D_MODEL] == 128 and row[F.INIT] == "normal"
        assert row[F.LR] == pytest.approx(float(client.get_run(res.run_id).data.params["optim.lr"]))
    assert runs.loc[results["olmo2"].run_id, F.SEED] == 0
    assert runs.loc[results["no_qk_norm"].run_id, F.SEED] == 1
    assert grid.params.loc[results["no_qk_norm"].run_id, "model.qk_norm"] == "none"
    assert grid.params.loc[results["olmo2"].run_id, "train.steps"] == 20

    for arm in ("olmo2", "no_qk_norm"):
        rid = results[arm].run_id
        row = runs.loc[rid]
        assert row[F.STATUS] == "finished" and pd.isna(row[F.DIVERGED_AT_STEP])
        assert row[F.LAST_STEP] == 19
        ev = sorted((m.step, m.value) for m in client.get_metric_history(rid, M.EVAL_LOSS))
        assert row[F.FINAL_EVAL_LOSS] == ev[-1][1] and row[F.BEST_EVAL_LOSS] == min(v for _, v in ev)
        loss = sorted((m.step, m.value) for m in client.get_metric_history(rid, M.TRAIN_LOSS))
        assert row[F.LOSS_AT_INIT] == loss[0][1] and row[F.FINAL_TRAIN_LOSS] == loss[-1][1]
        gn = [m.value for m in client.get_metric_history(rid, M.GRAD_NORM)]
        assert row[F.MAX_GRAD_NORM] == max(gn)
        attn = grid.dense[(grid.dense[F.RUN_ID] == rid) & (grid.dense["key"] == M.ATTN_LOGIT_MAX)]
        assert len(attn) and row[F.MAX_ATTN_LOGIT] == pytest.approx(attn["value"].max())
        for col in (F.FINAL_LOG_Z, F.GROWTH_ACT, F.GROWTH_GRAD):
            assert math.isfinite(row[col]), col
        score = sorted((m.step, m.value) for m in client.get_metric_history(rid, M.SPIKE_SCORE_GRAD_NORM))
        assert row[F.SPIKE_SCORE_GRAD_NORM] == pytest.approx(score[-1][1] if score else np.nan, nan_ok=True)
        assert row[F.N_SPIKES] == 0  # spikes.csv is there, with no events in 20 steps
        s = grid.metric(M.TRAIN_LOSS)
        s = s[s[F.RUN_ID] == rid]
        assert s["step"].tolist() == list(range(20)) and s["value"].tolist() == [v for _, v in loss]
        d = grid.dense[(grid.dense[F.RUN_ID] == rid) & (grid.dense["key"] == M.GRAD_NORM)]
        assert sorted(d["layer"].unique()) == [0, 1, 2, 3] and sorted(d["step"].unique()) == list(range(20))

    bad = runs.loc[results["nan"].run_id]
    assert bad[F.STATUS] == "diverged" and bad[F.DIVERGED_AT_STEP] == 6 and bad[F.LAST_STEP] == 5
    assert math.isnan(bad[F.FINAL_EVAL_LOSS])
    assert list(grid.series.columns) == list(F.SERIES_COLUMNS)
    assert list(grid.dense.columns) == list(F.DENSE_COLUMNS)
    assert list(grid.spikes.columns) == [F.RUN_ID, *EVENT_COLUMNS]


def _same_series_all_paths(uri: str, runs: list, series: pd.DataFrame) -> None:
    client = MlflowClient(uri)
    key = [F.RUN_ID, "metric", "step"]
    expected = series.sort_values(key).reset_index(drop=True).astype({F.RUN_ID: object, "metric": object})
    for points in (load_metrics.api_points(uri, client, runs, None),
                   load_metrics._sqlalchemy_points(uri, runs, None)):
        got = load_metrics.series_frame(load_metrics.dedupe(points), None)
        got = got.sort_values(key).reset_index(drop=True).astype({F.RUN_ID: object, "metric": object})
        pd.testing.assert_frame_equal(got, expected)


def test_load_grid_end_to_end(grid_store):
    tmp, uri, parent, results = grid_store
    client = MlflowClient(uri)
    grid = load_grid(GRID, uri)
    _check_grid(grid, uri, parent, results)
    # the API path (a tracking server) and the generic SQL path give the same series frame
    runs = [client.get_run(r.run_id) for r in results.values()]
    _same_series_all_paths(uri, runs, grid.series)
    # a remote artifact store: the same artifacts through MlflowClient.download_artifacts
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(load_artifacts, "_local_artifact_dir", lambda *a: (None, None))
        remote = load_grid(GRID, uri, series=[])
    pd.testing.assert_frame_equal(remote.dense, grid.dense)
    pd.testing.assert_frame_equal(remote.runs, grid.runs)
    assert remote.series.empty
    # `series` restricts the series frame, not the summaries; dense=False leaves dense empty
    small = load_grid(GRID, uri, series=["train/"], dense=False)
    assert set(small.series["metric"]) == {k for k in grid.series["metric"] if k.startswith("train/")}
    layer_keys = {k for k in grid.series["metric"] if k.startswith("grad/norm/layer_")}
    # every fetch path honours `wanted` (LIKE's "_" escaped)
    for fetch in (load_metrics.sql_points, load_metrics._sqlalchemy_points, load_metrics.api_points):
        args = (uri, runs, ("grad/norm/layer_",)) if fetch is load_metrics._sqlalchemy_points else (
            uri, client, runs, ("grad/norm/layer_",))
        assert set(fetch(*args).keys) == layer_keys != set()
    assert small.dense.empty
    pd.testing.assert_series_equal(small.runs[F.FINAL_EVAL_LOSS], grid.runs[F.FINAL_EVAL_LOSS])


def test_load_grid_from_a_copied_store(grid_store, tmp_path, monkeypatch):
    tmp, uri, parent, results = grid_store
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy2(tmp / "mlflow.db", other / "mlflow.db")
    shutil.copytree(tmp / "mlartifacts", other / "mlartifacts")
    first = load_grid(GRID, uri)
    moved = tmp_path / "moved"  # the original folder is gone on "this" machine
    tmp.rename(moved)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}/mlflow.db")
        grid = load_grid(GRID)
        _check_grid(grid, f"sqlite:///{other}/mlflow.db", parent, results)
        pd.testing.assert_frame_equal(grid.runs, first.runs)
        pd.testing.assert_frame_equal(grid.series, first.series)
        pd.testing.assert_frame_equal(grid.dense, first.dense)
        only_db = tmp_path / "only_db"  # the database without its artifact folder: a warning
        only_db.mkdir()
        shutil.copy2(other / "mlflow.db", only_db / "mlflow.db")
        with pytest.warns(UserWarning, match="artifact folder"):
            bare = load_grid(GRID, f"sqlite:///{only_db}/mlflow.db")
        assert bare.dense.empty and bare.runs[F.N_SPIKES].isna().all()
        pd.testing.assert_frame_equal(bare.series, first.series)
    finally:
        moved.rename(tmp)


def test_plain_experiment_and_newest_parent(grid_store, tmp_path):
    uri = grid_store[1]  # a second experiment in the same store (a new store costs seconds)
    client = MlflowClient(uri)
    exp = client.create_experiment("plain", artifact_location=artifact_root_for(uri))
    a = client.create_run(exp, run_name="solo", tags={"seed": "3", "lr": "0.01"}).info.run_id
    client.log_batch(a, metrics=[Metric(M.TRAIN_LOSS, 5.0, 1, 0)])
    client.set_terminated(a, "KILLED")
    b = client.create_run(exp, run_name="other", tags={"arm": "b", "status": "finished"}).info.run_id
    events = [SpikeEvent(7, "grad/norm@olmo2", 9.0, 8.0, 1.0, 1.0, 2, 11.0, True, False),
              SpikeEvent(9, "train/loss@olmo_core", 5.0, float("nan"), 1.0, 0.5)]
    client.log_text(b, events_to_frame(events).to_csv(index=False), M.SPIKES_ARTIFACT)
    grid = load_grid("plain", uri)
    row = grid.runs.iloc[0]
    assert grid.parent_run_id is None and grid.baseline is None
    # no status tag: MLflow's KILLED reads as interrupted (stopped from outside), as our runs mean it
    assert (row[F.ARM], row[F.SEED], row[F.LR], row[F.STATUS]) == ("solo", 3, 0.01, "interrupted")
    assert np.isnan(row[F.N_SPIKES]) and grid.dense.empty  # no spikes.csv: no data, not 0
    assert grid.runs[F.N_SPIKES].tolist()[1] == 2 and grid.runs[F.ARM].tolist()[1] == "b"
    expected = events_to_frame(events)
    expected.insert(0, F.RUN_ID, b)
    pd.testing.assert_frame_equal(grid.run_spikes(b), expected, check_dtype=True)

    old = client.create_run(exp, run_name="grid1", tags={"stability.role": "grid", "baseline": "x"})
    time.sleep(0.01)
    new = client.create_run(exp, run_name="grid2", tags={"stability.role": "grid", "baseline": "y"})
    for p, arm in ((old, "x"), (new, "y")):
        client.create_run(exp, tags={"mlflow.parentRunId": p.info.run_id, "arm": arm})
    grid = load_grid("plain", uri)
    assert grid.parent_run_id == new.info.run_id and grid.runs[F.ARM].tolist() == ["y"]
    assert grid.runs[F.STATUS].tolist() == ["running"]
    grid = load_grid("plain", uri, parent_run_id=old.info.run_id)
    assert grid.baseline == "x" and grid.runs[F.ARM].tolist() == ["x"]
    with pytest.raises(LookupError):
        load_grid("nope", uri)
    # a spec file or a bundled grid name stands for the experiment named by the spec
    spec = load_spec("quick")
    quick = client.create_experiment(spec.name, artifact_location=artifact_root_for(uri))
    client.create_run(quick, run_name="q", tags={"arm": "olmo2"})
    assert load_grid(str(GRIDS_DIR / "quick.toml"), uri).name == spec.name
    assert load_grid("quick", uri).runs[F.ARM].tolist() == ["olmo2"]
    with pytest.raises(FileNotFoundError):
        load_grid("plain", f"sqlite:///{tmp_path}/missing.db")


def test_a_step_logged_twice_keeps_the_last_point(grid_store):
    uri = grid_store[1]
    client = MlflowClient(uri)
    exp = client.create_experiment("dupes", artifact_location=artifact_root_for(uri))
    rid = client.create_run(exp, run_name="r", tags={"arm": "a"}).info.run_id
    client.log_batch(rid, metrics=[Metric(M.TRAIN_LOSS, float(10 + s), 1000, s) for s in range(5)])
    # a resumed process re-logs steps 3..4 (later timestamps, other values), then goes on
    client.log_batch(rid, metrics=[Metric(M.TRAIN_LOSS, float(20 + s), 2000, s) for s in range(3, 7)])
    client.log_batch(rid, metrics=[Metric(M.GRAD_NORM, float("nan"), 1000, 0),
                                   Metric(M.GRAD_NORM, float("inf"), 1000, 1)])
    grid = load_grid("dupes", uri)
    s = grid.metric(M.TRAIN_LOSS)
    assert s["step"].tolist() == list(range(7))
    assert s["value"].tolist() == [10, 11, 12, 23, 24, 25, 26]
    g = grid.metric(M.GRAD_NORM)["value"].tolist()
    assert math.isnan(g[0]) and g[1] == math.inf
    row = grid.runs.iloc[0]
    assert row[F.LAST_STEP] == 6 and row[F.FINAL_TRAIN_LOSS] == 26 and row[F.LOSS_AT_INIT] == 10
    assert row[F.MAX_GRAD_NORM] == math.inf
    _same_series_all_paths(uri, [client.get_run(rid)], grid.series)
