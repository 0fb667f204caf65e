"""Grid cells with several data-parallel ranks: the worker runs torchrun (gloo on CPU) inside the
cell, rank 0 logs; the result equals the same cell trained in one process (to 1e-5), and a
crashing multi-rank cell is recorded failed with its rank's traceback."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from mlflow.tracking import MlflowClient

from ablations.runner import LocalRunner
from ablations.spec import parse_spec
from model.config import ConfigError

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")

STEPS = 6


def _spec(name: str, resources: dict, arms: dict | None = None):
    return parse_spec({
        "name": name, "preset": "olmo2-tiny", "baseline": "a", "seeds": [0],
        "base": {"train": {"log_every": 1, "eval_every": 0, "batch_size": 4},
                 "data": {"max_bytes": 300_000}, "optim": {"eps": 1e-6}},
        "budget": {"steps": STEPS}, "resources": resources, "arms": arms or {"a": {}},
    })


def _losses(uri: str, experiment: str) -> dict[str, tuple[dict[int, float], dict[str, str]]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        if run.data.tags.get("stability.role") == "grid":
            continue
        history = client.get_metric_history(run.info.run_id, "train/loss")
        steps = [m.step for m in history]
        assert sorted(steps) == list(range(STEPS)), steps  # every step once, from rank 0 alone
        out[run.data.tags["arm"]] = ({m.step: m.value for m in history}, run.data.tags)
    return out


def test_two_rank_cell_equals_the_one_process_cell(tmp_path):
    one = _spec("ranks1", {"cpus": 2})
    two = _spec("ranks2", {"cpus": 2, "ranks": 2})
    assert two.ranks == 2 and one.ranks == 1
    assert [c.cell_id for c in one.cells()] == [c.cell_id for c in two.cells()]  # same config
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for spec in (one, two):
        outcome = LocalRunner(spec, jobs=1, tracking_uri=uri, runs_dir=tmp_path / "runs",
                              progress=False).run()
        assert outcome.status == "finished" and outcome.counts.get("finished") == 1, outcome
    (single, _), = _losses(uri, "ranks1").values()
    (multi, tags), = _losses(uri, "ranks2").values()
    assert tags["status"] == "finished" and tags["ranks"] == "2"
    for step in range(STEPS):
        assert multi[step] == pytest.approx(single[step], abs=1e-5), step
    cell_dir = tmp_path / "runs" / "ranks2" / two.cells()[0].cell_id
    assert (cell_dir / "ranks.log").exists() and (cell_dir / "progress.json").exists()
    assert not list(cell_dir.glob("traceback*"))


def test_crashing_multi_rank_cell_is_recorded_failed(tmp_path):
    spec = _spec("ranks_bad", {"cpus": 2, "ranks": 2},
                 arms={"a": {"data": {"corpus": str(tmp_path / "missing")}}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outcome = LocalRunner(spec, jobs=1, tracking_uri=uri, runs_dir=tmp_path / "runs",
                          progress=False).run()
    assert outcome.status == "failed" and outcome.counts.get("failed") == 1, outcome
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("ranks_bad").experiment_id],
                             filter_string="tags.arm = 'a'")[0]
    assert run.data.tags["status"] == "failed"
    cell_dir = tmp_path / "runs" / "ranks_bad" / spec.cells()[0].cell_id
    text = (cell_dir / "traceback.txt").read_text()
    assert "rank 0:" in text and "missing" in text


@pytest.mark.parametrize(("resources", "message"), [
    ({"gpus": 2, "ranks": 3}, "resources.ranks: with GPUs each rank has one, so ranks must equal gpus"),
    ({"ranks": 3}, "resources.ranks: 3 ranks do not divide train.batch_size 4 of arm 'a'"),
])
def test_rank_resources_are_checked_before_anything_runs(resources, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _spec("ranks_check", resources).cells()


@pytest.mark.slow  # ~60 s: a 2-rank cell killed mid-run, then resumed from its sharded checkpoint
def test_killed_multi_rank_cell_resumes_from_its_sharded_checkpoint(tmp_path):
    """kill -9 of the runner: worker, torchrun and ranks all die (PDEATHSIG down the chain); the
    rerun resumes the cell from its step_N.dcp checkpoint into the same run, each step once."""
    import json
    import os
    import signal
    import subprocess
    import time

    from tests.ablations.helpers import grid_cli, wait_until

    steps = 40
    spec_file = tmp_path / "kr.toml"
    spec_file.write_text(f"""
name = "kill_ranks"
preset = "olmo2-tiny"
baseline = "a"
seeds = [0]
[base]
train.log_every = 1
train.checkpoint_every = 10
train.eval_every = 0
train.batch_size = 4
data.max_bytes = 300000
[budget]
steps = {steps}
[resources]
cpus = 2
ranks = 2
[arms.a]
""")
    args = ("grid", "run", str(spec_file), "--no-progress")
    proc = grid_cli(*args, cwd=tmp_path)
    grid_dir = tmp_path / "runs" / "kill_ranks"

    def midway_with_a_checkpoint() -> bool:
        progress = list(grid_dir.glob("*/progress.json")) if grid_dir.exists() else []
        step = json.loads(progress[0].read_text()).get("step", 0) if progress else 0
        return 15 <= step < steps - 5 and bool(list(grid_dir.glob("*/step_*.dcp")))

    wait_until(proc, midway_with_a_checkpoint, 240, "the cell past step 15 with a checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)
    ranks_alive = subprocess.run(["pgrep", "-f", f"ablations.worker {grid_dir}"],
                                 capture_output=True, text=True).stdout.split()
    assert ranks_alive == [], "ranks outlived the runner"
    rerun = grid_cli(*args, cwd=tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("kill_ranks").experiment_id])
    (cell,) = [r for r in runs if r.data.tags.get("stability.role") != "grid"]
    assert cell.data.tags["status"] == "finished" and cell.data.tags["ranks"] == "2"
    assert int(cell.data.tags["resumed_at_step"]) >= 10
    logged = [m.step for m in client.get_metric_history(cell.info.run_id, "train/loss")]
    assert sorted(logged) == list(range(steps))
