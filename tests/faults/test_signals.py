"""SIGTERM and SIGINT to a real `stability train` (train.checkpoint_every 0), then `--resume`: the
stopped process checkpoints after its current step, logs every step it took, marks its run
`interrupted` (MLflow KILLED) and exits 128 + the signal; the resume continues the same MLflow
run to the end, every step logged once, and ends bitwise equal to the uninterrupted run. A run
killed before any checkpoint is resumed into its own run, never a second one of the same name."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from stability.checkpoint import list_checkpoints, verify
from tests.faults.helpers import (
    TINY,
    TrainProcess,
    assert_each_step_once,
    assert_same,
    cli,
    error_lines,
    final_state,
    histories,
    only_run,
)

STEPS, LOG = 40, 5
ARGS = (*TINY, "--run-name", "r", "--set", f"train.steps={STEPS}", "--set", f"train.log_every={LOG}",
        "--set", "train.eval_every=20", "--set", "optim.skip_step=true",
        "--set", "optim.skip_step_window=8")
SEED = int(os.environ.get("STABILITY_FAULT_SEED", time.time_ns() % 2**31))
WALL_CLOCK = {"train/tokens_per_s"}
SIGNALS = {"term": signal.SIGTERM, "int": signal.SIGINT}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The uninterrupted reference and one process per signal, signalled at a random step (the
    signal lands wherever the process is by then: mid-step, at a read-out, ...)."""
    root = tmp_path_factory.mktemp("signals")
    rng = random.Random(SEED)
    ref = TrainProcess(root / "ref", *ARGS, "--no-progress")
    procs = {name: TrainProcess(root / name, *ARGS) for name in SIGNALS}
    shown = {name: p.signal_at(rng.randint(3, STEPS - 15), SIGNALS[name]) for name, p in procs.items()}
    assert ref.wait() == 0, ref.stderr[-3000:]
    for p in procs.values():
        p.wait()
    return root, procs, shown


@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_stop_signal_checkpoints_logs_every_step_and_marks_the_run_interrupted(stopped, name):
    root, procs, shown = stopped
    proc, sig = procs[name], SIGNALS[name]
    context = f"STABILITY_FAULT_SEED={SEED}: {sig.name} at step ~{shown[name]}"
    assert proc.proc.returncode == 128 + sig, (context, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, context
    (ckpt,) = list_checkpoints(root / name / "runs" / "r")  # checkpoint_every 0: only the stop's
    stop_step = int(ckpt.stem.split("_")[1])
    assert shown[name] <= stop_step < STEPS and verify(ckpt) is None, context
    assert f"status: interrupted by {sig.name} after {stop_step} steps" in proc.stdout, context
    client, run = only_run(f"sqlite:///{root / name}/mlflow.db")
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted", context
    assert run.data.tags["interrupted_at_step"] == str(stop_step), context
    assert run.data.tags["stop_signal"] == sig.name, context
    hist = histories(client, run)
    assert_each_step_once(hist, stop_step)  # the step buffer was read out: nothing lost
    assert "spikes.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}, context


@pytest.mark.parametrize("name", list(SIGNALS))
def test_resume_after_a_stop_is_the_uninterrupted_run_in_the_same_mlflow_run(stopped, name):
    root, procs, shown = stopped
    context = f"STABILITY_FAULT_SEED={SEED}: {SIGNALS[name].name} at step ~{shown[name]}"
    _, before = only_run(f"sqlite:///{root / name}/mlflow.db")
    done = cli("train", *ARGS, "--resume", "--no-progress", cwd=root / name)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"status: finished after {STEPS} steps" in done.stdout
    assert_same(final_state(root / "ref", STEPS), final_state(root / name, STEPS), f"{name} state")
    ref = histories(*only_run(f"sqlite:///{root / 'ref'}/mlflow.db"))
    client, run = only_run(f"sqlite:///{root / name}/mlflow.db")  # still one run
    assert run.info.run_id == before.info.run_id
    got = histories(client, run)
    assert_each_step_once(got, STEPS)
    assert got.keys() == ref.keys()
    for key in sorted(set(ref) - WALL_CLOCK):  # read-out series too: at the same steps, same values
        assert got[key] == ref[key], (key, context)
    assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"
    assert run.data.tags["resumed_at_step"] == before.data.tags["interrupted_at_step"]


def test_resume_of_a_run_killed_before_any_checkpoint_continues_its_run(tmp_path):
    """kill -9 before the first checkpoint (checkpoint_every 0): `--resume` says in one line that
    there is nothing to resume and restarts into the run of that name: one MLflow run."""
    work = tmp_path / "w"
    args = (*TINY, "--run-name", "r", "--set", "train.steps=20", "--set", f"train.log_every={LOG}",
            "--set", "train.eval_every=0")
    TrainProcess(work, *args).kill_at(LOG + 2)  # some steps are in MLflow already
    _, killed = only_run(f"sqlite:///{work}/mlflow.db")
    done = cli("train", *args, "--resume", "--no-progress", cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    notes = [line for line in error_lines(done.stderr) if "nothing to resume" in line]
    assert notes == [f"note: nothing to resume (no checkpoint in {Path('runs') / 'r'}); starting "
                     f"from step 0 in MLflow run {killed.info.run_id}"], done.stderr[-3000:]
    client, run = only_run(f"sqlite:///{work}/mlflow.db")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert_each_step_once(histories(client, run), 20)


def test_a_bad_stop_signal_is_one_line_and_exit_2(tmp_path):
    done = cli("train", *TINY, "--stop-signal", "USR9", cwd=tmp_path)
    assert done.returncode == 2
    assert error_lines(done.stderr) == ["error: --stop-signal: 'USR9' is not a signal that can be "
                                        "caught (e.g. USR1, USR2, HUP, XCPU; comma-separated, or none)"]
