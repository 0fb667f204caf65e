"""The `Tracker`: one MLflow run written from a background thread, so the training loop never
waits on the store.

Metrics, params, tags, the final status and dense-artifact uploads are queued by the trainer and
written by a writer thread (metrics in batches of at most 1000 points). The store itself (URI
rule, tags, statuses, client) is `stability.store`'s; the spool that keeps writes through an
outage, and the exactly-once argument, are `stability.tracking_io`'s.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stability import store
from stability.store import MLFLOW_STATUS, Tag, check_reachable, resolve_uri, retry, safe_uri
from stability.tracking_io import (
    DEFAULT_SPOOL_DIR,
    DENSE_ARTIFACT_DIR,
    MAX_BATCH,
    MAX_PARAMS,
    MAX_TAGS,
    SEND_DELAYS,
    SEND_TIMEOUT_S,
    SPOOL_VERSION,
    Sender,
    Spool,
    is_permanent,
    spool_groups,
)


def resumable_run_id(uri: str, experiment: str, run_name: str, cell: str) -> str | None:
    """The newest run named `run_name` of the same config (`cell` tag) that is not a result yet
    (killed before its first checkpoint), so that `--resume` without a checkpoint continues it
    instead of opening a second run under one name; None when there is none."""
    uri = resolve_uri(uri)
    check_reachable(uri)
    client = store.client(uri)
    exp = retry(client.get_experiment_by_name, experiment)
    if exp is None:
        return None
    runs = retry(client.search_runs, [exp.experiment_id], filter_string=f"tags.cell = '{cell}'",
                 order_by=["attributes.start_time DESC"], max_results=1000)  # cell: hex digits
    for run in runs:
        if run.info.run_name == run_name and run.data.tags.get(Tag.STATUS) not in store.RESULTS:
            return run.info.run_id
    return None


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, when it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# ------------------------------------------------------------------------------------------ tracker
class Tracker:
    """One MLflow run: params, tags, batched metrics from a writer thread, artifacts, status.

    Survives mid-run outages of the store by spooling to `spool_dir` (see the module docstring);
    the constructor itself needs the store (`TrackingUnavailable` for an unreachable server).
    """

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None, *,
                 spool_dir: str | Path = DEFAULT_SPOOL_DIR, finish_timeout: float = 30.0,
                 retry_max_interval: float = 10.0, tags: dict[str, str] | None = None) -> None:
        self.uri = resolve_uri(uri)
        check_reachable(self.uri)
        self.client = store.client(self.uri)
        self.experiment_id = store.experiment_id(self.client, experiment, self.uri)
        self.resumed = run_id is not None
        if run_id is None:
            run = retry(self.client.create_run, self.experiment_id, run_name=run_name or None,
                         tags=tags or None)
            run_id = run.info.run_id
        self.run_id: str = run_id
        self.finish_timeout = finish_timeout
        self.retry_max_interval = retry_max_interval
        self.spool = Spool(Path(spool_dir).resolve() / f"{self.run_id}.jsonl")
        self.logged_through = -1
        if self.resumed:  # points a crashed process spooled count as logged: they will be sent
            self.logged_through = max(self._last_logged_step(), self.spool.max_step("train/loss"))
            self._reopen()
        self._sender = Sender(self.client, self.uri)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._id_prefix = uuid.uuid4().hex[:8]
        self._seq = 0
        self._backoff = 0.5
        self._next_drain = 0.0  # monotonic time of the next attempt to drain the spool
        self._sent_so_far = 0  # points of this backlog sent by drains that yielded to the queue
        self._outage_since: float | None = None
        self._dense_seen: set[str] = set()
        self._deadline: float | None = None  # set by finish(): after it, records go to the spool
        self._writer = threading.Thread(target=self._write_loop, name="mlflow-writer", daemon=True)
        self._writer.start()

    def _reopen(self) -> None:
        """A resumed run is RUNNING again (an interrupted one was KILLED, a failed one FAILED)."""
        if retry(self.client.get_run, self.run_id).info.status != "RUNNING":
            retry(self.client.update_run, self.run_id, "RUNNING")

    def _last_logged_step(self, key: str = "train/loss") -> int:
        history = retry(self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=-1)

    # -- writes from the training thread (non-blocking) ---------------------------------------
    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        """Queue `values` at `step`; steps already logged before a resume are dropped."""
        if step <= self.logged_through:
            return
        self._queue.put(("metrics", step, int(time.time() * 1000), values))

    def log_params(self, params: dict[str, Any]) -> None:
        """Queue params (values cut to MLflow's 6000 characters); sent in requests of <= 100."""
        items = [(k, store.param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self._queue.put(("params", items[i:i + MAX_PARAMS]))

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Queue tags (None values skipped); written in order with the metrics."""
        items = [(k, str(v)) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), MAX_TAGS):
            self._queue.put(("tags", items[i:i + MAX_TAGS]))

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write a text artifact now (blocking; meant for the start of a run)."""
        retry(self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file now (blocking; meant for the start of a run)."""
        retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_dense_parts(self, directory: str | Path, artifact_path: str = DENSE_ARTIFACT_DIR) -> int:
        """Queue the upload of part files in `directory` not queued before; return how many.

        Part files are immutable once they exist (`stability.dense` writes them atomically), so
        each is uploaded once per Tracker; uploads go through the writer thread (spooled and
        replayed like metrics when the store is away).
        """
        from stability.dense import part_files

        new = [p for p in part_files(directory) if str(p) not in self._dense_seen]
        for p in new:
            self._dense_seen.add(str(p))
            self._queue.put(("artifact", str(p), artifact_path))
        return len(new)

    # -- the writer thread -------------------------------------------------------------------
    def _record(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        return {"v": SPOOL_VERSION, "id": f"{self._id_prefix}-{self._seq}", "run_id": self.run_id,
                "uri": safe_uri(self.uri), "kind": kind, **fields}

    def _records(self, items: list[tuple]) -> list[dict[str, Any]]:
        """Queue items -> spool records, in order; runs of metric items in chunks of MAX_BATCH."""
        out: list[dict[str, Any]] = []
        metrics: list[list] = []

        def flush_metrics() -> None:
            for i in range(0, len(metrics), MAX_BATCH):
                out.append(self._record("batch", metrics=metrics[i:i + MAX_BATCH]))
            metrics.clear()

        for item in items:
            if item[0] == "metrics":
                _, step, ts, values = item
                metrics.extend([k, float(v), ts, int(step)] for k, v in values.items())
                continue
            flush_metrics()
            if item[0] == "params":
                out.append(self._record("batch", metrics=[], params=[list(p) for p in item[1]]))
            elif item[0] == "tags":
                out.append(self._record("batch", metrics=[], tags=[list(t) for t in item[1]]))
            elif item[0] == "terminate":
                out.append(self._record("terminate", status=item[1], end_time=item[2]))
            elif item[0] == "artifact":
                out.append(self._record("artifact", path=item[1], artifact_path=item[2]))
        flush_metrics()
        return out

    def _write_loop(self) -> None:
        if self.spool.pending:  # left by a crashed process of this run: send it first
            print(f"tracking: sending {self.spool.path} left by an earlier process first",
                  file=sys.stderr)
            self._outage_since = time.monotonic()
        while True:
            wait = max(0.0, self._next_drain - time.monotonic()) if self.spool.pending else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                self._drain(yield_to_queue=True)
                continue
            items, stop = [], None
            n_points = 0
            while True:
                if item[0] == "stop":
                    stop = item
                    break
                items.append(item)
                n_points += len(item[3]) if item[0] == "metrics" else 1
                if n_points >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            try:
                for rec in self._records(items):
                    self._deliver(rec)
            except BaseException as exc:  # noqa: BLE001 - reported by flush(), training goes on
                self._error = exc
            finally:
                for _ in items:
                    self._queue.task_done()
            if stop is not None:
                try:
                    self._drain_until(stop[1])
                finally:
                    self._queue.task_done()
                return
            if self._deadline is None and self.spool.pending and time.monotonic() >= self._next_drain:
                self._drain(yield_to_queue=True)  # after task_done: a flush() never waits on it
                # (once finish() set its deadline, only _drain_until sends, within it)

    def _send_bounded(self, rec: dict[str, Any]) -> None:
        """Send one record with the short retry; raise the last error."""
        for attempt in range(len(SEND_DELAYS) + 1):
            try:
                self._sender.send([rec])
                return
            except Exception as exc:  # noqa: BLE001
                if is_permanent(exc) or attempt == len(SEND_DELAYS):
                    raise
                time.sleep(SEND_DELAYS[attempt])

    def _deliver(self, rec: dict[str, Any]) -> None:
        """Send `rec`, or append it to the spool when the store is away (or behind a backlog).

        Behind a backlog it is only appended: the spool is sent between queue items, so a
        `flush()` (before every checkpoint) waits for a file append, never for a drain.
        """
        if self.spool.pending or (self._deadline is not None
                                  and time.monotonic() >= self._deadline):
            self.spool.append([rec])  # behind the backlog, or finish() ran out of time
            return
        try:
            self._send_bounded(rec)
        except Exception as exc:  # noqa: BLE001
            if is_permanent(exc):
                self._error = exc
                return
            self.spool.append([rec])
            self._outage_since = time.monotonic()
            self._backoff = 0.5
            self._next_drain = time.monotonic() + self._backoff
            print(f"warning: tracking store unreachable ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200]}); spooling to {self.spool.path}",
                  file=sys.stderr)

    def _drain(self, timeout: float = SEND_TIMEOUT_S, yield_to_queue: bool = False) -> bool:
        """Send the spool from its head; True when it is empty afterwards.

        With `yield_to_queue`, stop after any request once the trainer has queued something
        (the next drain resumes at the head): a long backlog never holds up a `flush()`.
        """
        if not self.spool.pending:
            return True
        sent = requests = 0
        try:
            for group, end in spool_groups(self.spool.records()):
                if requests and yield_to_queue and not self._queue.empty():
                    self._sent_so_far += sent
                    self._next_drain = time.monotonic()  # back to it once the queue is served
                    return False
                requests += 1
                try:
                    sent += self._sender.send(group, timeout=timeout)
                except Exception as exc:  # noqa: BLE001
                    if not is_permanent(exc):
                        raise
                    print(f"warning: the store rejected spooled record {group[0]['id']} "
                          f"({exc}); dropping it", file=sys.stderr)
                    self._error = exc
                self.spool.advance(end, group[-1]["id"])
        except Exception:  # noqa: BLE001 - still away: back off
            self._sent_so_far += sent
            self._next_drain = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max_interval)
            return False
        self.spool.clear()
        self._backoff = 0.5
        sent, self._sent_so_far = sent + self._sent_so_far, 0
        if self._outage_since is not None:
            print(f"tracking: store back after {time.monotonic() - self._outage_since:.0f} s; "
                  f"spool sent ({sent} points)", file=sys.stderr)
            self._outage_since = None
        return True

    def _drain_until(self, deadline: float) -> None:
        while self.spool.pending:
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= self._next_drain:
                if self._drain(timeout=min(SEND_TIMEOUT_S, max(1.0, deadline - now))):
                    return
                self._next_drain = min(self._next_drain, time.monotonic() + 2.0)
            time.sleep(max(0.0, min(self._next_drain, deadline) - time.monotonic()))

    def flush(self) -> None:
        """Wait until every queued item is written or spooled; report a write that was rejected."""
        self._queue.join()
        if self._error is not None:
            err, self._error = self._error, None
            print(f"warning: some tracking writes were rejected: {err}", file=sys.stderr)

    def finish(self, status: str, tags: dict[str, Any] | None = None,
               timeout: float | None = None) -> Path | None:
        """Record the final `status` tag (and extra tags), end the run, stop the writer.

        Waits at most `timeout` seconds (default `finish_timeout`) for the store; when it is still
        away, the rest stays in the spool, one line tells how to replay it and its path is returned.
        """
        timeout = self.finish_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._writer.is_alive():
            self.set_tags({Tag.STATUS: status, **(tags or {})})
            self._queue.put(("terminate", MLFLOW_STATUS.get(status, "KILLED"),
                             int(time.time() * 1000)))
            self._queue.put(("stop", deadline))
            self._deadline = deadline
            # past the deadline the writer only appends to the spool; one request may be in flight
            self._writer.join(timeout=timeout + SEND_TIMEOUT_S + 30.0)
            if self._writer.is_alive():
                print("warning: the tracking writer is still busy; the last points may be lost",
                      file=sys.stderr)
        if self._error is not None:
            err, self._error = self._error, None
            print(f"warning: some tracking writes were rejected: {err}", file=sys.stderr)
        if self.spool.pending:
            uri = f" --tracking-uri {self.uri}" if safe_uri(self.uri) else " --tracking-uri URI"
            print(f"tracking: store unreachable; unsent points kept in {self.spool.path}; send "
                  f"them with: stability tracking replay {self.spool.path}{uri}", file=sys.stderr)
            return self.spool.path
        return None

    def url_hint(self) -> str:
        """Where a person looks at this run (for a local store: the command that serves it, too)."""
        return store.ui_hint(self.uri, self.experiment_id, self.run_id)


