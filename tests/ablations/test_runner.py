"""The grid runner with real worker processes, a real sqlite store and (for parallel workers) the
loopback tracking server: every cell once, every point once, failures isolated, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablations.grid_tracking import GridStore
from ablations.runner import LocalRunner
from ablations.spec import parse_spec
from ablations.status import cell_statuses, format_matrix
from tests.ablations.helpers import grid_cli, wait_until

STEPS = 20
LOG_EVERY = 5


def _spec(name: str, arms: dict, seeds=(0, 1), steps: int = STEPS, base: dict | None = None):
    data = {"name": name, "preset": "olmo2-tiny", "baseline": next(iter(arms)), "seeds": list(seeds),
            "base": {"train": {"log_every": LOG_EVERY, "eval_every": 0, "eval_batches": 1,
                               **(base or {})}},
            "budget": {"steps": steps}, "arms": arms}
    return parse_spec(data)


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _assert_every_step_once(client: MlflowClient, run_id: str, steps: int) -> None:
    """Every step of the per-step series exactly once; the read-out series never twice."""
    for key in ("train/loss", "grad/norm"):
        logged = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(logged) == list(range(steps)), (key, sorted(logged))
    logged = [m.step for m in client.get_metric_history(run_id, "train/lr")]
    assert len(logged) == len(set(logged)) and max(logged) == steps - 1, logged


@pytest.fixture(scope="module")
def parallel_grid(tmp_path_factory):
    """2 arms x 2 seeds with 4 workers at once on one sqlite file (through the loopback server)."""
    root = tmp_path_factory.mktemp("grid")
    uri = f"sqlite:///{root}/mlflow.db"
    spec = _spec("par", {"a": {}, "b": {"model": {"qk_norm": "none"}}})
    runner = LocalRunner(spec, jobs=4, tracking_uri=uri, runs_dir=root / "runs", progress=False)
    t0 = time.monotonic()
    outcome = runner.run()
    return spec, uri, root, outcome, time.monotonic() - t0


def test_four_parallel_workers_log_every_point_once(parallel_grid):
    spec, uri, root, outcome, _ = parallel_grid
    assert outcome.status == "finished" and outcome.counts["finished"] == 4
    client, runs = _runs(uri, "par")
    parents = [r for r in runs if r.data.tags.get("stability.role") == "grid"]
    children = [r for r in runs if r.data.tags.get("stability.role") != "grid"]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.tags["baseline"] == "a" and parents[0].data.tags["status"] == "finished"
    by_cell = {r.data.tags["cell"]: r for r in children}
    assert set(by_cell) == {c.cell_id for c in spec.cells()}  # the trainer's hash == the spec's
    for cell in spec.cells():
        run = by_cell[cell.cell_id]
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert (tags["arm"], int(tags["seed"]), tags["status"]) == (cell.arm, cell.seed, "finished")
        assert run.info.status == "FINISHED" and run.data.params["model.qk_norm"] == \
            cell.config.model.qk_norm
        _assert_every_step_once(client, run.info.run_id, STEPS)
    logs = " ".join(p.read_text(errors="replace") for p in (root / "runs" / "par").glob("*/worker.log"))
    assert "database is locked" not in logs and "Traceback" not in logs
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert "grid_cells.json" in artifacts


def test_mlflow_layout_as_its_users_know_it(parallel_grid):
    """What MLflow's UI shows: a model-training experiment; a parent run with the study's params
    and figures; children recording the user's store (not the loopback server), filterable recipe
    tags, `n_params` (not MLflow's "Params"), None params as None."""
    spec, uri, *_ = parallel_grid
    client, runs = _runs(uri, "par")
    exp = client.get_experiment_by_name("par")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = next(r for r in runs if r.data.tags.get("stability.role") == "grid")
    assert parent.data.params["preset"] == "olmo2-tiny" and parent.data.params["baseline"] == "a"
    assert parent.data.params["seeds"] == "[0, 1]" and parent.data.params["budget.steps"] == "20"
    assert parent.data.params["arms.b.model.qk_norm"] == "none"
    assert parent.data.params["arms.a"] == "no overrides"
    m = parent.data.metrics
    assert (m["cells/finished"], m["cells/failed"], m["cells/pending"]) == (4.0, 0.0, 0.0)
    for arm in ("a", "b"):
        evals = [r.data.metrics["eval/loss"] for r in runs if r.data.tags.get("arm") == arm]
        assert m[f"arm/{arm}/final_eval_loss"] == pytest.approx(sum(evals) / len(evals))
    for run in runs:
        if run is parent or run.info.run_id == parent.info.run_id:
            continue
        tags, params = run.data.tags, run.data.params
        assert "params" not in tags and int(tags["n_params"]) > 0
        assert params["tracking.uri"] == uri and "tracking.via" not in params
        assert params["model.clip_qkv"] == "None" and params["model.n_kv_heads"] == "None"
        want = ("olmo2", "olmo2", "") if tags["arm"] == "a" else ("custom", "olmo2", "model.qk_norm=none")
        assert (tags["recipe"], tags["base_recipe"], tags["deviations"]) == want


def test_status_matrix_comes_from_mlflow_alone(parallel_grid):
    spec, uri, *_ = parallel_grid
    statuses = cell_statuses(spec, GridStore(uri, spec))
    assert [s.status for s in statuses] == ["finished"] * 4
    text = format_matrix(spec, statuses)
    lines = text.splitlines()
    assert "4 finished" in lines[0] and lines[1].split() == ["arm", "seed", "0", "seed", "1"]
    assert lines[2].startswith("* a") and lines[2].count("ok ") == 2 and lines[3].startswith("  b")


def test_rerun_skips_finished_cells(parallel_grid):
    spec, uri, root, _, _ = parallel_grid
    outcome = LocalRunner(spec, jobs=4, tracking_uri=uri, runs_dir=root / "runs", progress=False).run()
    assert outcome.status == "finished" and outcome.results == {c.cell_id: "finished" for c in spec.cells()}
    _, runs = _runs(uri, "par")
    assert len(runs) == 5  # the parent and the four cells: nothing new


def _write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_crashing_cell_is_recorded_failed_and_the_grid_goes_on(tmp_path):
    spec_file = _write_spec(tmp_path / "f.toml", f"""
name = "fail"
preset = "olmo2-tiny"
baseline = "ok"
seeds = [0]
[base]
train.log_every = {LOG_EVERY}
train.eval_every = 0
[budget]
steps = 10
[arms.ok]
[arms.broken]
data.corpus = "{tmp_path}/no_such_corpus.txt"
""")
    proc = grid_cli("grid", "run", str(spec_file), "--jobs", "2", "--no-progress", cwd=tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out
    assert "grid fail: failed (1 finished, 1 failed)" in out
    client, runs = _runs(f"sqlite:///{tmp_path}/mlflow.db", "fail")
    by_arm = {r.data.tags.get("arm"): r for r in runs}
    assert by_arm["ok"].data.tags["status"] == "finished"
    broken = by_arm["broken"]
    assert broken.data.tags["status"] == "failed" and broken.info.status == "FAILED"
    trace = Path(client.download_artifacts(broken.info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert "no_such_corpus" in trace and "Traceback" in trace
    assert by_arm[None].data.tags["status"] == "failed"  # the parent: not every cell is a result
    status = grid_cli("grid", "status", str(spec_file), cwd=tmp_path)
    text, _ = status.communicate(timeout=120)
    assert "FAILED" in text and "ok " in text, text


def _progress_steps(cell_dirs: list[Path]) -> list[int]:
    out = []
    for d in cell_dirs:
        try:
            out.append(json.loads((d / "progress.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            out.append(0)
    return out


def test_killing_the_runner_then_rerunning_completes_each_cell_once(tmp_path):
    """kill -9 of the runner with cells in flight: its workers die with it (PDEATHSIG); the rerun
    resumes each interrupted cell from its checkpoint into the same run, no step logged twice."""
    steps = 60
    spec_file = _write_spec(tmp_path / "k.toml", f"""
name = "kill"
preset = "olmo2-tiny"
baseline = "a"
seeds = [0]
[base]
train.log_every = {LOG_EVERY}
train.checkpoint_every = 10
train.eval_every = 0
[budget]
steps = {steps}
[arms.a]
[arms.b]
model.qk_norm = "none"
""")
    proc = grid_cli("grid", "run", str(spec_file), "--jobs", "2", "--no-progress", cwd=tmp_path)
    grid_dir = tmp_path / "runs" / "kill"

    def both_cells_midway() -> bool:
        dirs = [d for d in grid_dir.glob("*") if d.is_dir()] if grid_dir.exists() else []
        got = _progress_steps(dirs)
        return len(dirs) == 2 and min(got) >= 15 and max(got) < steps

    wait_until(proc, both_cells_midway, 240, "both cells past step 15")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # PDEATHSIG: the workers are gone
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, runs = _runs(uri, "kill")
    assert {r.data.tags.get("status") for r in runs} == {"running"}
    rerun = grid_cli("grid", "run", str(spec_file), "--jobs", "2", "--no-progress", cwd=tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    client, runs = _runs(uri, "kill")
    children = [r for r in runs if r.data.tags.get("stability.role") != "grid"]
    assert len(children) == 2 and len(runs) == 3
    for run in children:
        assert run.data.tags["status"] == "finished" and "resumed_at_step" in run.data.tags
        _assert_every_step_once(client, run.info.run_id, steps)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2], ids=["1-rank", "2-ranks"])
def test_slurm_path_through_submitits_local_executor(tmp_path, ranks):
    """The Slurm backend's tasks (submitit's local executor): each runs the cell's worker code,
    with 2 ranks torchrun inside the task (train.batch_size 4 splits 2 + 2)."""
    spec_file = _write_spec(tmp_path / "s.toml", f"""
name = "slurmish"
preset = "olmo2-tiny"
baseline = "a"
seeds = [0, 1]
[base]
train.log_every = {LOG_EVERY}
train.eval_every = 0
train.checkpoint_every = 10
train.batch_size = 4
[budget]
steps = {STEPS}
[resources]
cpus = {ranks}
ranks = {ranks}
time_min = 10
[arms.a]
""")
    proc = grid_cli("grid", "run", str(spec_file), "--backend", "submitit-local", "--no-progress",
                    cwd=tmp_path)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    client, runs = _runs(f"sqlite:///{tmp_path}/mlflow.db", "slurmish")
    children = [r for r in runs if r.data.tags.get("stability.role") != "grid"]
    assert sorted(int(r.data.tags["seed"]) for r in children) == [0, 1]
    for run in children:
        assert run.data.tags["status"] == "finished" and run.data.tags["ranks"] == str(ranks)
        _assert_every_step_once(client, run.info.run_id, STEPS)
    assert list((tmp_path / "runs" / "slurmish" / "submitit").glob("*/*_submitted.pkl"))
