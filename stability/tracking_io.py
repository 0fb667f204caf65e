"""Store I/O below the `Tracker`: the spool file that keeps writes during an outage, the sender
and `replay_spool` (the URI rule, retries and reachability are `stability.store`'s).

Outages. The run must exist to be written to, so the constructor needs the store: an `http(s)://`
server that does not answer at start raises `TrackingUnavailable` after a few seconds. Mid-run the
writer survives any outage: a write that still fails after a short bounded retry (about a second)
goes to a spool file, `<spool_dir>/<run_id>.jsonl`, and while the spool is non-empty every later
write is appended behind it (so the order holds). The writer retries the spool from its head with
exponential backoff (0.5 s doubling to `retry_max_interval`, 10 s by default) and removes a record
only after the store accepted it. `finish()` drains for at most `finish_timeout` seconds; what is
left stays on disk and one line says how to send it: `replay_spool(path, uri)` (the CLI's
`stability tracking replay <spool file> [--tracking-uri URI]`). A resumed run (same run id, same
spool dir) adopts a spool a crashed process left behind and drains it first.

A spool append that fails (disk full) is cut back to the bytes it had, so the spool stays intact,
and raises `SpoolWriteError` naming the file (the Tracker reports it at `flush()` / `finish()`).

Spool format: JSON lines, one record per line, appended with flush + fsync:
    {"v": 1, "id": "<writer>-<seq>", "run_id": ..., "uri": ..., "kind": "batch",
     "metrics": [[key, value, timestamp_ms, step], ...], "params": [[k, v]], "tags": [[k, v]]}
    {"v": 1, ..., "kind": "terminate", "status": "FINISHED", "end_time": ms}
    {"v": 1, ..., "kind": "artifact", "path": "/abs/part-00003.parquet", "artifact_path": "dense"}
Progress is `<run_id>.jsonl.offset` (JSON `{"offset": bytes, "id": last sent record}`, replaced
atomically after every accepted request); both files are deleted once the spool is empty. A torn
last line (a crash inside an append) is skipped.

Exactly once. Every point keeps the timestamp taken in `log_metrics`, so a re-send is the identical
(key, timestamp, step, value). Experiment (MLflow 3.17, `mlflow server` on a sqlite store, and the
SQL store itself, which is what the server runs): log_batch of a batch already stored returns OK and
adds no row; a batch mixing stored and new points adds only the new ones; the same (key, step,
value) with another timestamp DOES add a second row. The SQL store catches the IntegrityError of the
metrics primary key (key, timestamp, step, run_uuid, value[, is_nan]), rolls back and inserts only
the missing rows (`SqlAlchemyStore._log_metrics_once`). Hence a crash between "accepted" and "offset
advanced", a request that timed out client-side after the server committed it, or a replay that
overlaps a drain, all re-send identical points the store ignores: never a duplicate. Re-setting a
tag or an equal param, `set_terminated` and re-uploading an artifact are idempotent as well. (A
non-SQL store without that key could duplicate at most the one request in flight at a crash.)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stability.store import check_reachable, client, is_http, resolve_uri, retry

DEFAULT_SPOOL_DIR = "mlflow_spool"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch request
MAX_PARAMS = 100  # MLflow's limit of params per log_batch request
MAX_TAGS = 100  # MLflow's limit of tags per log_batch request
SEND_TIMEOUT_S = 10.0  # one HTTP request to the server, connect + read
SEND_DELAYS = (0.1, 0.3)  # the short retry before a write is spooled (3 attempts)
SPOOL_VERSION = 1
DENSE_ARTIFACT_DIR = "dense"


class SpoolWriteError(OSError):
    """Records could not be appended to the spool (disk full, ...); what it held is intact."""


def is_permanent(exc: BaseException) -> bool:
    """A store error that a retry cannot fix (the request itself is bad): 4xx but auth/rate."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        code = exc.get_http_status_code()
        return 400 <= code < 500 and code not in (401, 403, 408, 429)
    return False


# ------------------------------------------------------------------------------------------ spool
class Spool:
    """An append-only JSONL file of records not yet accepted by the store, plus a read offset."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset_path = self.path.with_name(self.path.name + ".offset")
        self.offset = 0
        if self.offset_path.exists():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                self.offset = int(json.loads(self.offset_path.read_text())["offset"])
        self._checked_tail = False

    @property
    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > self.offset
        except FileNotFoundError:
            return False

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append `records` (one write, then fsync). A failed write (disk full, ...) cuts the file
        back to what it held before and raises `SpoolWriteError`: the spool stays intact."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            if not self._checked_tail and start > 0:  # a torn line from a crash must not swallow
                with open(self.path, "rb") as r:  # the next one
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                err = SpoolWriteError(f"tracking spool {self.path}: cannot append {len(records)} "
                                      f"record(s) ({reason}); they are lost, the {start} bytes "
                                      "spooled before are intact")
                err.errno = exc.errno
                raise err from exc
            self._checked_tail = True
        finally:
            os.close(fd)

    def records(self) -> Iterator[tuple[dict[str, Any], int]]:
        """(record, byte offset just past it) from the current offset on; torn lines skipped."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - a generator holds it
        except FileNotFoundError:
            return
        with f:
            f.seek(self.offset)
            pos = self.offset
            for line in f:
                pos += len(line)
                if not line.endswith(b"\n"):
                    return  # being written, or torn by a crash with nothing after it
                try:
                    rec = json.loads(line)
                except ValueError:
                    print(f"warning: skipping a torn line in {self.path} at byte {pos - len(line)}",
                          file=sys.stderr)
                    continue
                yield rec, pos

    def advance(self, offset: int, record_id: str | None) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"offset": offset, "id": record_id}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.offset_path)
        self.offset = offset

    def clear(self) -> None:
        """Delete the spool once everything in it was accepted."""
        for p in (self.path, self.offset_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.offset = 0
        self._checked_tail = False

    def max_step(self, key: str) -> int:
        """The last step of `key` in the records still pending (-1 when none)."""
        best = -1
        for rec, _ in self.records():
            for k, _v, _ts, step in rec.get("metrics", ()):
                if k == key and step > best:
                    best = step
        return best


def spool_groups(records: Iterator[tuple[dict[str, Any], int]]
            ) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """Consecutive metric-only records of one run merged into requests of <= MAX_BATCH points."""
    group: list[dict[str, Any]] = []
    end = 0
    n = 0
    for rec, pos in records:
        mergeable = (rec.get("kind") == "batch" and not rec.get("params") and not rec.get("tags"))
        if group and (not mergeable or rec["run_id"] != group[0]["run_id"]
                      or n + len(rec["metrics"]) > MAX_BATCH):
            yield group, end
            group, n = [], 0
        if not mergeable:
            yield [rec], pos
            continue
        group.append(rec)
        n += len(rec["metrics"])
        end = pos
    if group:
        yield group, end


# ------------------------------------------------------------------------------------------ sender
class Sender:
    """Sends spool-format records to the store; HTTP requests bounded, without MLflow's retries."""

    def __init__(self, mlflow_client: Any, uri: str) -> None:
        self.client = mlflow_client
        self.uri = uri
        self._creds = None
        if is_http(uri):
            from mlflow.store.tracking.rest_store import RestStore

            store = getattr(getattr(mlflow_client, "_tracking_client", None), "store", None)
            if isinstance(store, RestStore):
                self._creds = store.get_host_creds

    def _post(self, endpoint: str, message, timeout: float) -> None:
        from mlflow.utils.proto_json_utils import message_to_json
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = http_request(self._creds(), endpoint, "POST", max_retries=0, backoff_factor=0,
                                backoff_jitter=0.0, timeout=max(1, round(timeout)),
                                json=json.loads(message_to_json(message)))
        verify_rest_response(response, endpoint)

    def send(self, group: list[dict[str, Any]], timeout: float = SEND_TIMEOUT_S) -> int:
        """Send one request made of `group` (records of one kind); return the points sent."""
        from mlflow.entities import Metric, Param, RunTag

        head = group[0]
        run_id = head["run_id"]
        kind = head.get("kind")
        if kind == "batch":
            metrics = [Metric(k, float(v), int(ts), int(s)) for r in group for k, v, ts, s in
                       r.get("metrics", ())]
            params = [Param(k, v) for r in group for k, v in r.get("params", ())]
            tags = [RunTag(k, v) for r in group for k, v in r.get("tags", ())]
            if self._creds is not None:
                from mlflow.protos.service_pb2 import LogBatch

                self._post("/api/2.0/mlflow/runs/log-batch",
                           LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics],
                                    params=[p.to_proto() for p in params],
                                    tags=[t.to_proto() for t in tags]), timeout)
            else:
                self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
            return len(metrics)
        if kind == "terminate":
            if self._creds is not None:
                from mlflow.entities import RunStatus
                from mlflow.protos.service_pb2 import UpdateRun

                self._post("/api/2.0/mlflow/runs/update",
                           UpdateRun(run_id=run_id, run_uuid=run_id,
                                     status=RunStatus.from_string(head["status"]),
                                     end_time=int(head["end_time"])), timeout)
            else:
                self.client.set_terminated(run_id, head["status"], int(head["end_time"]))
            return 0
        if kind == "artifact":
            if not Path(head["path"]).exists():
                print(f"warning: artifact {head['path']} is gone; not uploaded", file=sys.stderr)
                return 0
            self.client.log_artifact(run_id, head["path"], head.get("artifact_path"))
            return 0
        raise ValueError(f"unknown spool record kind {kind!r}")


def replay_spool(path: str | Path, uri: str | None = None, *, attempts: int = 5) -> int:
    """Send a spool file left by `Tracker.finish` to the store; return the metric points sent.

    `uri` defaults to the one recorded in the spool, else `resolve_uri()`. Records are sent in
    order and removed only once accepted, so an interrupted replay can simply be run again; points
    the store already has are ignored by it (see the module docstring). Do not run it while the
    run's own Tracker is still alive. Raises the store's error when it stays unreachable.
    """
    spool = Spool(path)
    if not spool.pending:
        if spool.path.exists():
            spool.clear()
        return 0
    if uri is None:
        first = next(spool.records(), (None, 0))[0]
        uri = (first or {}).get("uri") or ""
    uri = resolve_uri(uri)
    check_reachable(uri)
    sender = Sender(client(uri), uri)
    sent = 0
    for group, end in spool_groups(spool.records()):
        try:
            sent += retry(sender.send, group, attempts=attempts)
        except Exception as exc:  # noqa: BLE001
            if not is_permanent(exc):
                raise
            print(f"warning: the store rejected spooled record {group[0]['id']} ({exc}); "
                  "skipping it", file=sys.stderr)
        spool.advance(end, group[-1]["id"])
    spool.clear()
    return sent
