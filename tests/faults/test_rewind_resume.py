"""kill -9 during a rewound stretch, then `--resume`: bitwise the uninterrupted run with rewinds.

The corrupted batches 30 and 31 raise a loss spike at step 30; the read-out of step 39 finds it
and the run goes back to step 20, skipping 20 batches. The checkpoint at step 40 falls in the
re-run stretch; the process is killed at a random step after it. The resumed run must end with
the same weights, optimizer and detector state, data offset and rewind record, and MLflow must
hold every step once, with the values of the uninterrupted run.
"""

from __future__ import annotations

import random
import signal

import pandas as pd

from stability.checkpoint import list_checkpoints
from tests.faults.helpers import (
    SEED,
    TINY,
    WALL_CLOCK,
    TrainProcess,
    assert_each_step_once,
    assert_same,
    cli,
    final_state,
    histories,
    only_run,
)

STEPS, CKPT = 70, 40
ARGS = (*TINY, "--run-name", "r", "--set", f"train.steps={STEPS}",
        "--set", f"train.checkpoint_every={CKPT}", "--set", "train.log_every=10",
        "--set", "train.eval_every=0", "--set", "probes.online_window=16",
        "--set", "data.bad_batches=[30, 31]", "--set", 'train.on_spike="rewind"',
        "--set", "rewind.before=10", "--set", "rewind.skip_batches=20")


def test_kill9_in_a_rewound_stretch_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    target = random.Random(SEED).randint(CKPT + 2, STEPS - 8)
    context = f"STABILITY_FAULT_SEED={SEED}: killed at step ~{target}"
    ref = TrainProcess(tmp_path / "ref", *ARGS, "--no-progress")
    crash = TrainProcess(tmp_path / "crash", *ARGS)
    crash.kill_at(target)
    assert ref.wait() == 0, ref.stderr[-3000:]
    assert crash.proc.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    assert "rewind 1/3: train/ce_loss" in crash.stderr and "back to step 20" in crash.stderr
    newest = int(list_checkpoints(tmp_path / "crash" / "runs" / "r")[-1].stem.split("_")[1])
    assert newest == CKPT, context  # the checkpoint inside the re-run stretch

    done = cli("train", *ARGS, "--resume", "--no-progress", cwd=tmp_path / "crash")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rewind" not in done.stderr  # the resumed run does not rewind again
    final = final_state(tmp_path / "crash", STEPS)
    assert final["data_offset"] == 20 and [r["to_step"] for r in final["rewinds"]] == [20]
    assert_same(final_state(tmp_path / "ref", STEPS), final, "state")

    ref_hist = histories(*only_run(f"sqlite:///{tmp_path / 'ref'}/mlflow.db"))
    client, run = only_run(f"sqlite:///{tmp_path / 'crash'}/mlflow.db")
    got = histories(client, run)
    assert_each_step_once(got, STEPS)
    assert got.keys() == ref_hist.keys()
    for key in sorted(set(ref_hist) - WALL_CLOCK):
        assert got[key] == ref_hist[key], (key, context)
    assert run.data.tags["rewinds"] == "1" and run.data.tags["status"] == "finished"
    rewinds = pd.read_csv(client.download_artifacts(run.info.run_id, "rewinds.csv", str(tmp_path)))
    got_rows = rewinds[["spike_step", "detected_at", "to_step", "data_offset"]].values.tolist()
    assert got_rows == [[30, 39, 20, 20]]
