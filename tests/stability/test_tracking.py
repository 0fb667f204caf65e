"""The tracker under store outages: spool, drain, bounded finish, replay, exactly-once delivery.

Real `mlflow server` processes on loopback (free ports, own process group, always killed in the
fixture's teardown), plus fast simulated outages against a sqlite store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from stability import store, tracking
from stability.dense import DenseWriter, read_dense
from stability.store import TrackingUnavailable
from stability.tracking import Tracker
from stability.tracking_io import Spool, replay_spool, spool_groups

KEYS = ["train/loss"] + [f"k{i}" for i in range(1, 5)]  # train/loss: the resume key
MLFLOW = Path(sys.executable).parent / "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a sqlite file in `root`; restartable on the same port and database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.db_uri = f"sqlite:///{root}/db.sqlite"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> float:
        if not MLFLOW.exists():
            pytest.skip("the mlflow command is not installed beside this interpreter")
        t0 = time.monotonic()
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", self.db_uri,
             "--default-artifact-root", str(self.root / "art"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(self.uri + "/health", timeout=0.5).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        text = (self.root / f"server-{self.starts}.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"mlflow server did not come up on port {self.port}:\n{text}")

    def stop(self) -> None:
        """Terminate the whole process group (the CLI runs uvicorn as a child); SIGKILL stragglers."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and _group_alive(pgid):
                self.proc.poll()  # reap the leader
                time.sleep(0.05)
            if not _group_alive(pgid):
                break
        self.proc.wait(timeout=10)
        self.proc = None


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path / "server")
    yield srv
    srv.stop()


def _log_steps(tracker: Tracker, steps, pause: float = 0.0) -> float:
    """Log KEYS at each step; return the longest log_metrics call (it must never block)."""
    worst = 0.0
    for s in steps:
        t0 = time.perf_counter()
        tracker.log_metrics(s, {k: s * 10.0 + i for i, k in enumerate(KEYS)})
        worst = max(worst, time.perf_counter() - t0)
        if pause:
            time.sleep(pause)
    return worst


def _assert_exactly_once(uri: str, run_id: str, n_steps: int) -> None:
    client = MlflowClient(uri)
    for i, key in enumerate(KEYS):
        hist = client.get_metric_history(run_id, key)
        steps = sorted(m.step for m in hist)
        assert steps == list(range(n_steps)), (key, len(steps))
        assert all(m.value == m.step * 10.0 + i for m in hist), key


def _tracker(uri: str, tmp_path: Path, **kw) -> Tracker:
    kw.setdefault("retry_max_interval", 1.0)
    return Tracker(uri, "outage", "run", spool_dir=tmp_path / "spool", **kw)


# ------------------------------------------------------------------------------ store facts
def test_store_ignores_a_resent_identical_point(tmp_path):
    """The experiment behind the dedup argument (module docstring): the SQL store's primary key."""
    uri = f"sqlite:///{tmp_path}/db.sqlite"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    ts = int(time.time() * 1000)
    batch = [Metric("a", 1.0, ts, 0), Metric("a", float("nan"), ts, 1)]
    client.log_batch(run_id, metrics=batch)
    client.log_batch(run_id, metrics=batch)  # identical: accepted, no row added
    client.log_batch(run_id, metrics=[batch[0], Metric("a", 3.0, ts, 2)])  # mixed: only the new
    assert sorted(m.step for m in client.get_metric_history(run_id, "a")) == [0, 1, 2]
    client.log_batch(run_id, metrics=[Metric("a", 1.0, ts + 1, 0)])  # another timestamp: a new row
    assert sorted(m.step for m in client.get_metric_history(run_id, "a")) == [0, 0, 1, 2]


# ------------------------------------------------------------------------------ spool file
def test_spool_skips_a_torn_line_and_groups_metric_records(tmp_path):
    spool = Spool(tmp_path / "r.jsonl")
    rec = {"v": 1, "run_id": "r", "kind": "batch"}
    spool.append([{**rec, "id": "a-1", "metrics": [["k", 1.0, 5, s] for s in range(600)]}])
    with open(spool.path, "ab") as f:
        f.write(b'{"v": 1, "id": "torn", "metr')  # a crash inside an append
    spool = Spool(spool.path)
    spool.append([{**rec, "id": "a-2", "metrics": [["k", 1.0, 5, s] for s in range(600, 1000)]},
                  {**rec, "id": "a-3", "metrics": [], "tags": [["status", "x"]]},
                  {**rec, "id": "a-4", "metrics": [["k", 1.0, 5, 1000]]}])
    ids = [r["id"] for r, _ in spool.records()]
    assert ids == ["a-1", "a-2", "a-3", "a-4"]
    groups = [([r["id"] for r in g], end) for g, end in spool_groups(spool.records())]
    assert [g for g, _ in groups] == [["a-1", "a-2"], ["a-3"], ["a-4"]]  # <= 1000 points each
    spool.advance(groups[0][1], "a-2")
    assert [r["id"] for r, _ in Spool(spool.path).records()] == ["a-3", "a-4"]
    assert Spool(spool.path).max_step("k") == 1000


# ------------------------------------------------------------------------------ simulated outages
class _Outage:
    """Makes a tracker's sends fail like an unreachable server while `down` is set."""

    def __init__(self, tracker: Tracker) -> None:
        self.down = threading.Event()
        real = tracker._sender.send

        def send(group, timeout=tracking.SEND_TIMEOUT_S):
            if self.down.is_set():
                raise ConnectionError("simulated outage")
            return real(group, timeout)

        tracker._sender.send = send


def test_simulated_outage_spools_then_drains_in_order_exactly_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/db.sqlite"
    tracker = _tracker(uri, tmp_path, retry_max_interval=0.5)
    outage = _Outage(tracker)
    tracker.log_params({"p": 1})
    _log_steps(tracker, range(50))
    tracker.flush()
    outage.down.set()
    tracker.set_tags({"phase": "outage"})
    assert _log_steps(tracker, range(50, 100)) < 0.05
    tracker.flush()
    assert tracker.spool.pending
    outage.down.clear()
    _log_steps(tracker, range(100, 150))
    assert tracker.finish("finished") is None
    assert not tracker.spool.path.exists()
    _assert_exactly_once(uri, tracker.run_id, 150)
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.data.tags["status"] == "finished" and run.data.tags["phase"] == "outage"
    assert run.info.status == "FINISHED" and run.data.params["p"] == "1"


def test_flush_during_a_long_backlog_waits_for_an_append_not_the_drain(tmp_path):
    """A checkpoint flushes the tracker; right after an outage the spool may take many requests
    to send, and the flush must not wait for them (it did: a 4.7 s pause in training)."""
    uri = f"sqlite:///{tmp_path}/db.sqlite"
    tracker = _tracker(uri, tmp_path, retry_max_interval=0.2)
    outage = _Outage(tracker)
    outage.down.set()
    _log_steps(tracker, range(2000))  # 20 requests of 1000 points once the store is back
    tracker.flush()
    assert tracker.spool.pending
    draining = threading.Event()
    fail = tracker._sender.send  # the outage's send, now passing through

    def slow(group, timeout=tracking.SEND_TIMEOUT_S):
        draining.set()
        time.sleep(0.2)
        return fail(group, timeout)

    tracker._sender.send = slow
    outage.down.clear()
    assert draining.wait(10), "the spool was never drained"
    _log_steps(tracker, [2000])
    tracker.flush()
    assert tracker.spool.pending, "flush() waited for the whole backlog"
    assert tracker.spool.max_step(KEYS[0]) == 2000  # the flushed point is in the spool, in order
    assert tracker.finish("finished") is None
    _assert_exactly_once(uri, tracker.run_id, 2001)


def test_finish_with_a_slow_store_spools_the_backlog_at_its_deadline(tmp_path):
    uri = f"sqlite:///{tmp_path}/db.sqlite"
    tracker = _tracker(uri, tmp_path)
    real = tracker._sender.send

    pace = 1.5  # s per request: the backlog takes 10 x this, finish waits its 0.5 s + one request

    def slow(group, timeout=tracking.SEND_TIMEOUT_S):
        time.sleep(pace)
        return real(group, timeout)

    tracker._sender.send = slow
    _log_steps(tracker, range(2000))  # 10 requests of 1000 points: 15 s at this pace
    t0 = time.monotonic()
    path = tracker.finish("finished", timeout=0.5)
    assert time.monotonic() - t0 < 5 * pace  # half the backlog: it did not wait for all of it
    assert path is not None and path.exists()
    assert replay_spool(path) > 0  # the URI recorded in the spool
    _assert_exactly_once(uri, tracker.run_id, 2000)
    assert MlflowClient(uri).get_run(tracker.run_id).info.status == "FINISHED"


def test_resumed_tracker_adopts_the_spool_a_crash_left(tmp_path):
    uri = f"sqlite:///{tmp_path}/db.sqlite"
    first = _tracker(uri, tmp_path)
    outage = _Outage(first)
    _log_steps(first, range(10))
    first.flush()
    outage.down.set()  # stays down: this process "crashes" with steps 10..19 in the spool
    _log_steps(first, range(10, 20))
    first.flush()
    assert first.spool.pending
    second = _tracker(uri, tmp_path, run_id=first.run_id)
    assert second.logged_through == 19  # spooled steps count as logged: the replay re-logs 12..19
    _log_steps(second, range(12, 30))
    assert second.finish("finished") is None
    _assert_exactly_once(uri, first.run_id, 30)


def test_unreachable_server_at_start_raises_quickly(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "START_WAIT_S", 0.5)
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        _tracker(f"http://127.0.0.1:{_free_port()}", tmp_path)
    assert time.monotonic() - t0 < 5


def test_log_dense_parts_uploads_each_new_part_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/db.sqlite"
    tracker = _tracker(uri, tmp_path)
    dense = DenseWriter(tmp_path / "dense")
    for step in range(4):
        dense.add(step, "act/rms", np.arange(3) + step)
        if step % 2:
            dense.flush()
    assert tracker.log_dense_parts(tmp_path / "dense") == 2
    assert tracker.log_dense_parts(tmp_path / "dense") == 0
    dense.add(4, "act/rms", np.arange(3))
    dense.flush()
    assert tracker.log_dense_parts(tmp_path / "dense") == 1
    tracker.finish("finished")
    client = MlflowClient(uri)
    names = sorted(Path(a.path).name for a in client.list_artifacts(tracker.run_id, "dense"))
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    local = client.download_artifacts(tracker.run_id, "dense", str(tmp_path / "down"))
    assert read_dense(local).equals(read_dense(tmp_path / "dense"))


# ------------------------------------------------------------------------------ real server
def test_server_killed_mid_run_finish_is_bounded_and_replay_exact(server, tmp_path):
    """Default suite (one server start): kill the server, keep logging, finish within its bound,
    then replay the spool into the server's own database; replaying it twice adds nothing."""
    server.start()
    tracker = _tracker(server.uri, tmp_path)
    tracker.set_tags({"status": "running"})
    _log_steps(tracker, range(100), pause=0.002)
    tracker.flush()
    server.stop()
    assert _log_steps(tracker, range(100, 200), pause=0.002) < 0.05  # training goes on
    t0 = time.monotonic()
    path = tracker.finish("diverged", {"diverged_at_step": 199}, timeout=2.0)
    assert time.monotonic() - t0 < 2.0 + tracking.SEND_TIMEOUT_S
    assert path is not None and path.exists()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[-1]["kind"] == "terminate" and all(r["run_id"] == tracker.run_id for r in records)
    copy = tmp_path / "copy.jsonl"
    shutil.copy(path, copy)  # as if a crash came between "accepted" and "removed from the spool"

    assert replay_spool(path, server.db_uri) >= 500
    assert not path.exists() and replay_spool(path, server.db_uri) == 0
    replay_spool(copy, server.db_uri)
    _assert_exactly_once(server.db_uri, tracker.run_id, 200)
    run = MlflowClient(server.db_uri).get_run(tracker.run_id)
    assert run.data.tags["status"] == "diverged" and run.data.tags["diverged_at_step"] == "199"
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_server_restarted_mid_run_every_point_once(server, tmp_path):
    """300 steps x 5 keys; the server dies after step 100 and comes back on the same port and
    database while training goes on; finish drains the spool; each point is there once."""
    server.start()
    tracker = _tracker(server.uri, tmp_path, retry_max_interval=2.0)
    worst = _log_steps(tracker, range(100), pause=0.003)
    server.stop()
    worst = max(worst, _log_steps(tracker, range(100, 160), pause=0.01))
    tracker.flush()
    assert tracker.spool.pending
    restart = threading.Thread(target=server.start)
    restart.start()
    step = 160
    while restart.is_alive() and step < 240:  # training goes on while the server comes back
        worst = max(worst, _log_steps(tracker, [step], pause=0.02))
        step += 1
    restart.join()
    worst = max(worst, _log_steps(tracker, range(step, 300), pause=0.05))
    deadline = time.monotonic() + 10
    while tracker.spool.pending and time.monotonic() < deadline:  # drained during training
        time.sleep(0.1)
    assert not tracker.spool.pending
    assert tracker.finish("finished", timeout=30) is None
    assert worst < 0.05
    assert not tracker.spool.path.exists()
    _assert_exactly_once(server.uri, tracker.run_id, 300)
    run = MlflowClient(server.uri).get_run(tracker.run_id)
    assert run.data.tags["status"] == "finished" and run.info.status == "FINISHED"


@pytest.mark.slow
def test_server_never_back_then_replay_over_http(server, tmp_path):
    server.start()
    tracker = _tracker(server.uri, tmp_path)
    _log_steps(tracker, range(50))
    tracker.flush()
    server.stop()
    _log_steps(tracker, range(50, 120))
    tracker.flush()
    assert tracker.spool.pending
    t0 = time.monotonic()
    path = tracker.finish("failed", timeout=3.0)
    assert time.monotonic() - t0 < 3.0 + tracking.SEND_TIMEOUT_S
    assert path is not None and path.exists()
    server.start()
    assert replay_spool(path) >= 70 * len(KEYS)  # the URI recorded in the spool
    assert not path.exists()
    _assert_exactly_once(server.uri, tracker.run_id, 120)
    run = MlflowClient(server.uri).get_run(tracker.run_id)
    assert run.data.tags["status"] == "failed" and run.info.status == "FAILED"
