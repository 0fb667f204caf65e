"""Stopping a grid: SIGTERM to the runner reaches every running cell, which checkpoints after its
current step (train.checkpoint_every 0) and is marked interrupted; a rerun resumes each cell into
its own run and completes it, every step logged once. On the Slurm path (submitit's local
executor), the preemption / pre-timeout signal checkpoints the cell and submitit requeues it; the
requeued task resumes it."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stability.checkpoint import list_checkpoints
from tests.ablations.helpers import grid_cli, wait_until

STEPS, LOG = 40, 5


def _spec(path: Path, name: str, arms: str, extra: str = "") -> Path:
    path.write_text(f"""
name = "{name}"
preset = "olmo2-tiny"
baseline = "a"
seeds = [0]
[base]
train.log_every = {LOG}
train.eval_every = 0
data.max_bytes = 300000
[budget]
steps = {STEPS}
{extra}
{arms}
""")
    return path


def _steps(cell_dirs: list[Path]) -> list[int]:
    out = []
    for d in cell_dirs:
        try:
            out.append(json.loads((d / "progress.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            out.append(0)
    return out


def _cells_midway(grid_dir: Path, n: int):
    def ready() -> bool:
        dirs = [d for d in grid_dir.glob("*") if (d / "job.json").exists()] if grid_dir.exists() else []
        got = _steps(dirs)
        return len(dirs) == n and min(got) >= 2 * LOG and max(got) < STEPS
    return ready


def _children(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("stability.role") == "grid"]
    return client, parents, [r for r in runs if r.data.tags.get("stability.role") != "grid"]


def _assert_every_step_once(client: MlflowClient, run_id: str) -> None:
    for key in ("train/loss", "grad/norm"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(STEPS)), key
    lr_steps = [m.step for m in client.get_metric_history(run_id, "train/lr")]
    assert sorted(lr_steps) == list(range(LOG - 1, STEPS, LOG)), lr_steps  # read-outs: same steps


def test_sigterm_to_the_runner_checkpoints_every_cell_and_a_rerun_completes_each_once(tmp_path):
    spec = _spec(tmp_path / "g.toml", "stop", "[arms.a]\n[arms.b]\nmodel.qk_norm = \"none\"\n")
    proc = grid_cli("grid", "run", str(spec), "--jobs", "2", cwd=tmp_path)  # a pipe: lines, no bar
    wait_until(proc, _cells_midway(tmp_path / "runs" / "stop", 2), 240, "both cells past step 10")
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, out
    lines = out.splitlines()
    assert sum(" ".join(line.split()).startswith(("interrupted a seed 0", "interrupted b seed 0"))
               and line.endswith("by SIGTERM; a rerun resumes it") for line in lines) == 2, out
    assert all(line.strip() and "\r" not in line for line in lines), out  # no padding lines
    assert "interrupted (SIGTERM): rerun the same command to continue the grid" in out, out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client, (parent,), children = _children(uri, "stop")
    assert parent.data.tags["status"] == "interrupted" and parent.info.status == "KILLED"
    stopped_at = {}
    for run in children:
        tags = run.data.tags
        assert tags["status"] == "interrupted" and run.info.status == "KILLED", tags
        assert tags["stop_signal"] == "SIGTERM"
        (ckpt,) = list_checkpoints(tmp_path / "runs" / "stop" / tags["cell"])
        assert ckpt.name == f"step_{int(tags['interrupted_at_step']):08d}.pt"
        stopped_at[run.info.run_id] = tags["interrupted_at_step"]
    status = grid_cli("grid", "status", str(spec), cwd=tmp_path)
    text, _ = status.communicate(timeout=120)
    assert len(re.findall(rf"stopped \d+/{STEPS}", text)) == 2 and "2 interrupted" in text, text

    rerun = grid_cli("grid", "run", str(spec), "--jobs", "2", "--no-progress", cwd=tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    client, (parent,), children = _children(uri, "stop")
    assert len(children) == 2 and parent.data.tags["status"] == "finished"
    for run in children:
        assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"
        assert run.data.tags["resumed_at_step"] == stopped_at[run.info.run_id]
        _assert_every_step_once(client, run.info.run_id)


def _submitit_task(root: Path) -> int:
    """The pid of the submitit task process (`python -m submitit.core._submit FOLDER`) under `root`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and any(str(root).encode() in a for a in args):
            return int(cmdline.parent.name)
    raise AssertionError(f"no submitit task under {root}")


@pytest.mark.slow
def test_a_preempted_cell_on_the_slurm_path_is_requeued_and_resumes(tmp_path):
    """submitit's preemption signal (USR2) to the task of a cell on submitit's local executor: the
    cell checkpoints, submitit requeues the task and the requeued task resumes the cell in its run."""
    spec = _spec(tmp_path / "s.toml", "pre", "[arms.a]\n", "[resources]\ncpus = 1\ntime_min = 10\n")
    proc = grid_cli("grid", "run", str(spec), "--backend", "submitit-local", "--no-progress",
                    cwd=tmp_path)
    wait_until(proc, _cells_midway(tmp_path / "runs" / "pre", 1), 240, "the cell past step 10")
    os.kill(_submitit_task(tmp_path / "runs"), signal.SIGUSR2)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    client, (parent,), (run,) = _children(f"sqlite:///{tmp_path}/mlflow.db", "pre")
    tags = run.data.tags
    assert tags["status"] == "finished" and parent.data.tags["status"] == "finished", tags
    assert tags["stop_signal"] == "SIGTERM"  # what the task passed on to the worker
    assert int(tags["interrupted_at_step"]) >= 2 * LOG and tags["resumed_at_step"] == tags[
        "interrupted_at_step"]
    _assert_every_step_once(client, run.info.run_id)
    logs = " ".join(p.read_text(errors="replace")
                    for p in (tmp_path / "runs" / "pre" / "submitit").glob("*/*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
