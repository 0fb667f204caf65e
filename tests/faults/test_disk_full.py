"""Disk full while writing a checkpoint or a tracking spool file: a clear one-line error naming
the file, and what was written before (the previous checkpoint, the spool's records) stays
intact and usable. A real size-limited tmpfs where mounting is permitted (root), plus a simulated
ENOSPC at the `os.write` level that runs anywhere."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from stability import tracking_io
from stability.checkpoint import CheckpointWriteError, list_checkpoints, load_latest, save_checkpoint, verify
from stability.tracking import Tracker
from stability.tracking_io import Spool, SpoolWriteError
from tests.faults.helpers import TINY, cli, error_lines, fill, only_run, tmpfs
from tests.stability.test_tracking import _Outage

NO_SPACE = os.strerror(errno.ENOSPC)


def _records(first: int, n: int, size: int = 50) -> list[dict]:
    return [{"v": 1, "id": f"w-{i}", "run_id": "r", "kind": "batch",
             "metrics": [["k", float(i), 1, i]], "pad": "x" * size} for i in range(first, first + n)]


def _ids(spool: Spool) -> list[str]:
    return [r["id"] for r, _ in Spool(spool.path).records()]


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_on_a_full_disk_fails_clearly_and_keeps_the_previous(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        save_checkpoint(disk / "ck", 1, {"step": 1, "w": torch.ones(60_000)})  # 240 kB
        with pytest.raises(CheckpointWriteError) as err:
            save_checkpoint(disk / "ck", 2, {"step": 2, "w": torch.ones(400_000)})  # 1.6 MB
        message = str(err.value)
        assert message == (f"checkpoint {disk / 'ck' / 'step_00000002.pt'}: cannot write it ({NO_SPACE}); "
                           f"the checkpoints written before in {disk / 'ck'} are kept")
        assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
        assert sorted(p.name for p in (disk / "ck").iterdir()) == [
            "latest.json", "step_00000001.pt", "step_00000001.pt.sha256"]  # no temp file, no step 2
        assert json.loads((disk / "ck" / "latest.json").read_text())["file"] == "step_00000001.pt"
        state = load_latest(disk / "ck")
        assert state["step"] == 1 and torch.equal(state["w"], torch.ones(60_000))


def test_training_on_a_full_disk_stops_with_the_file_named_and_the_last_checkpoint_whole(tmp_path):
    """`stability train` whose checkpoint folder fills up: the first checkpoint (13.4 MB) fits in
    20 MB, the second does not; the run stops with one clear line and is resumable from step 5."""
    with tmpfs(tmp_path / "disk", "20m") as disk:
        ckpt = disk / "run"
        done = cli("train", *TINY, "--no-progress", "--set", "train.steps=10", "--set", "train.log_every=5",
                   "--set", "train.checkpoint_every=5", "--set", f'train.checkpoint_dir="{ckpt}"',
                   cwd=tmp_path)
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]  # one line, no traceback
        last = error_lines(done.stderr)[-1]
        assert last == (f"error: checkpoint {ckpt / 'step_00000010.pt'}: "
                        f"cannot write it ({NO_SPACE}); the checkpoints written before in {ckpt} are kept")
        assert [p.name for p in list_checkpoints(ckpt)] == ["step_00000005.pt"]
        assert verify(ckpt / "step_00000005.pt") is None
        assert json.loads((ckpt / "latest.json").read_text())["file"] == "step_00000005.pt"
        assert not [p for p in ckpt.iterdir() if ".tmp" in p.name]
        _, run = only_run(f"sqlite:///{tmp_path}/mlflow.db")
        assert run.data.tags["status"] == "failed" and run.info.status == "FAILED"


# ------------------------------------------------------------------------------------ spool
def test_spool_append_on_a_full_disk_fails_clearly_and_keeps_the_spool(tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        spool = Spool(disk / "spool" / "run.jsonl")
        spool.append(_records(0, 20))
        before = spool.path.read_bytes()
        filler = fill(disk, leave=16_384)
        with pytest.raises(SpoolWriteError) as err:
            spool.append(_records(20, 5, size=20_000))  # 100 kB: part of it lands, then ENOSPC
        assert str(err.value) == (f"tracking spool {spool.path}: cannot append 5 record(s) ({NO_SPACE}); "
                                  f"they are lost, the {len(before)} bytes spooled before are intact")
        assert spool.path.read_bytes() == before  # the torn part was cut back
        filler.unlink()
        spool.append(_records(25, 3))
        assert _ids(spool) == [f"w-{i}" for i in (*range(20), 25, 26, 27)]
        assert "torn" not in capsys.readouterr().err


def test_spool_append_with_a_simulated_enospc_keeps_the_spool(tmp_path, monkeypatch):
    """The same without a mount: `os.write` writes half of the append, then reports ENOSPC."""
    spool = Spool(tmp_path / "run.jsonl")
    spool.append(_records(0, 4))
    before = spool.path.read_bytes()
    real_write = os.write
    inode = os.stat(spool.path).st_ino

    def half_then_full(fd: int, data) -> int:
        if os.fstat(fd).st_ino != inode:
            return real_write(fd, data)
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(tracking_io.os, "write", half_then_full)  # process-wide; other files pass
    with pytest.raises(SpoolWriteError, match=f"tracking spool {spool.path}: cannot append 2 record"):
        spool.append(_records(4, 2))
    monkeypatch.setattr(tracking_io.os, "write", real_write)
    assert spool.path.read_bytes() == before
    spool.append(_records(6, 1))
    assert _ids(spool) == ["w-0", "w-1", "w-2", "w-3", "w-6"]


def test_tracker_outage_on_a_full_disk_reports_it_and_delivers_the_rest_once(tmp_path, capsys):
    """The store is away (points go to the spool), then the spool's disk fills up: the tracker says
    which file and that the points are lost; once there is space and the store is back, every point
    spooled before and logged after arrives, once."""
    uri = f"sqlite:///{tmp_path}/db.sqlite"
    with tmpfs(tmp_path / "disk", "1m") as disk:
        tracker = Tracker(uri, "full", "run", spool_dir=disk / "spool", retry_max_interval=0.5)
        outage = _Outage(tracker)

        def log(s: int) -> None:
            tracker.log_metrics(s, {"train/loss": s * 1.0, **{f"pad/{i}": 0.5 for i in range(100)}})

        for s in range(10):
            log(s)
        tracker.flush()
        outage.down.set()
        for s in range(10, 20):
            log(s)
        tracker.flush()
        before = tracker.spool.path.read_bytes()
        filler = fill(disk, leave=0)  # a step's record (5 kB) is more than a page's slack
        for s in range(20, 30):
            log(s)
        tracker.flush()
        err = capsys.readouterr().err
        assert f"tracking spool {tracker.spool.path}: cannot append" in err and NO_SPACE in err, err
        assert tracker.spool.path.read_bytes() == before
        filler.unlink()
        outage.down.clear()
        for s in range(30, 40):
            log(s)
        assert tracker.finish("finished", timeout=30) is None
    steps = sorted(m.step for m in MlflowClient(uri).get_metric_history(tracker.run_id, "train/loss"))
    lost = set(range(20, 30))
    assert steps == [s for s in range(40) if s not in lost]
