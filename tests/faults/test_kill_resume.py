"""kill -9 of a real `stability train` process at a random step, then `--resume`: the result is
bitwise the uninterrupted run (weights, optimizer moments, skip-step and spike-detector state,
every logged value) and the MLflow run holds every step once; a corrupted newest checkpoint is
skipped with a message and the previous one is used; a checkpoint that would run code when
unpickled is refused in one line."""

from __future__ import annotations

import hashlib
import json
import random
import signal
from pathlib import Path

import pytest
import torch

from model.config import ConfigError
from stability.checkpoint import (
    UnsafeCheckpointError,
    list_checkpoints,
    load_latest,
    save_checkpoint,
    verify,
)
from tests.faults.helpers import (
    SEED,
    TINY,
    WALL_CLOCK,
    TrainProcess,
    assert_each_step_once,
    assert_same,
    cli,
    error_lines,
    final_state,
    histories,
    only_run,
)

STEPS, CKPT, LOG = 40, 10, 5
ARGS = (*TINY, "--run-name", "r", "--set", f"train.steps={STEPS}",
        "--set", f"train.checkpoint_every={CKPT}", "--set", f"train.log_every={LOG}",
        "--set", "train.eval_every=20", "--set", "optim.skip_step=true",
        "--set", "optim.skip_step_window=8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three processes at once: the uninterrupted reference, one killed at a random step after its
    first checkpoint, one killed after its second checkpoint (for the corruption test)."""
    root = tmp_path_factory.mktemp("kill")
    rng = random.Random(SEED)
    ref = TrainProcess(root / "ref", *ARGS, "--no-progress")
    crash = TrainProcess(root / "crash", *ARGS)
    corrupt = TrainProcess(root / "corrupt", *ARGS)
    # targets leave >= 10 steps of margin: the bar lags the process by a few steps on a busy box
    targets = {"crash": rng.randint(CKPT + 1, STEPS - CKPT),
               "corrupt": rng.randint(2 * CKPT + 1, 3 * CKPT - 1)}
    killed = {"crash": crash.kill_at(targets["crash"]), "corrupt": corrupt.kill_at(targets["corrupt"])}
    assert ref.wait() == 0, ref.stderr[-3000:]
    for name, proc in (("crash", crash), ("corrupt", corrupt)):
        assert proc.proc.returncode == -signal.SIGKILL, (name, proc.stderr[-3000:])
        assert not (proc.cwd / "runs" / "r" / f"step_{STEPS:08d}.pt").exists(), name
    return root, targets, killed


def _assert_latest_is_whole(ckpt_dir: Path) -> None:
    """latest.json parses and names a checkpoint that exists and verifies (never half-written)."""
    latest = json.loads((ckpt_dir / "latest.json").read_text())
    assert (ckpt_dir / latest["file"]).exists() and verify(ckpt_dir / latest["file"]) is None


def _assert_equals_reference(root: Path, name: str, resumed_at: int, context: str) -> None:
    assert_same(final_state(root / "ref", STEPS), final_state(root / name, STEPS), f"{name} state")
    ref = histories(*only_run(f"sqlite:///{root / 'ref'}/mlflow.db"))
    client, run = only_run(f"sqlite:///{root / name}/mlflow.db")
    got = histories(client, run)
    assert_each_step_once(got, STEPS)
    assert got.keys() == ref.keys()
    for key in sorted(set(ref) - WALL_CLOCK):
        assert got[key] == ref[key], (key, context)  # bitwise: the same float64 from the same float32
    assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"
    assert run.data.tags["resumed_at_step"] == str(resumed_at), context


def test_kill9_at_a_random_step_then_resume_is_bitwise_the_uninterrupted_run(runs):
    root, targets, killed = runs
    context = f"STABILITY_FAULT_SEED={SEED}: killed at step ~{killed['crash']}"
    ckpt_dir = root / "crash" / "runs" / "r"
    _assert_latest_is_whole(ckpt_dir)
    newest = int(list_checkpoints(ckpt_dir)[-1].stem.split("_")[1])
    assert newest >= CKPT, context
    done = cli("train", *ARGS, "--resume", "--no-progress", cwd=root / "crash")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"status: finished after {STEPS} steps" in done.stdout
    _assert_equals_reference(root, "crash", newest, context)


def test_corrupted_newest_checkpoint_is_skipped_and_the_previous_used(runs):
    root, targets, killed = runs
    context = f"STABILITY_FAULT_SEED={SEED}: killed at step ~{killed['corrupt']}"
    ckpt_dir = root / "corrupt" / "runs" / "r"
    _assert_latest_is_whole(ckpt_dir)
    *_, previous, newest = list_checkpoints(ckpt_dir)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size: only the checksum can tell
    newest.write_bytes(bytes(data))
    done = cli("train", *ARGS, "--resume", "--no-progress", cwd=root / "corrupt")
    assert done.returncode == 0, done.stderr[-3000:]
    warning = f"warning: skipping checkpoint {newest.relative_to(root / 'corrupt')}: checksum mismatch"
    assert warning in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    _assert_equals_reference(root, "corrupt", int(previous.stem.split("_")[1]), context)
    _assert_latest_is_whole(ckpt_dir)


class _Payload:
    """Unpickling this runs code: it writes the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plant_hostile_checkpoint(ckpt_dir: Path, marker: Path, step: int = 10) -> Path:
    """A checkpoint file whose unpickling would run code, with a matching sha256 sidecar."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    torch.save({"step": step, "model": _Payload(marker)}, path)
    blob = path.read_bytes()
    path.with_suffix(".pt.sha256").write_text(json.dumps(
        {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "step": step}))
    return path


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path):
    save_checkpoint(tmp_path / "ck", 5, {"step": 5, "w": torch.ones(3)})  # an older good one
    path = _plant_hostile_checkpoint(tmp_path / "ck", tmp_path / "PWNED")
    with pytest.raises(UnsafeCheckpointError) as err:  # a ConfigError: the CLI says it, exit 2
        load_latest(tmp_path / "ck")
    assert str(err.value).startswith(f"checkpoint {path}: refused, it references exec")
    assert "\n" not in str(err.value) and isinstance(err.value, ConfigError)
    assert not (tmp_path / "PWNED").exists()


def test_resume_from_a_hostile_checkpoint_is_refused_and_runs_no_code(tmp_path):
    """`stability train --resume` over a run folder holding a hostile checkpoint (with a matching
    sha256 sidecar): one line naming the file, exit 2, no code run, no tracking run opened."""
    work = tmp_path / "work"
    path = _plant_hostile_checkpoint(work / "runs" / "evil", tmp_path / "PWNED")
    done = cli("train", *TINY, "--run-name", "evil", "--resume", "--no-progress", cwd=work)
    assert done.returncode == 2, done.stderr[-3000:]
    last = error_lines(done.stderr)[-1]
    assert last.startswith(f"error: checkpoint {path.relative_to(work)}: refused, it references exec"), last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "PWNED").exists()
    assert not (work / "mlflow.db").exists()  # stopped before the run was opened
