"""MLflow tracking, the one door to the tracker (DESIGN.md section 3, "MLflow layout").

URI: explicit, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the working directory with
artifacts beside it (`./mlartifacts`). Metrics are queued by the trainer and written by a
background thread in batches of at most 1000 points, so the training loop never waits on the
store; failed writes are retried with backoff ("database is locked" included).
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch request
MAX_PARAMS = 100  # MLflow's limit of params per log_batch request
STATUSES = ("running", "finished", "diverged", "failed")
_MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}


def resolve_uri(uri: str = "") -> str:
    """The tracking URI by DESIGN.md's rule."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def artifact_root_for(uri: str) -> str | None:
    """For a local sqlite store: `mlartifacts/` beside the database file; else the server's choice."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).resolve()
    return (db.parent / "mlartifacts").as_uri()


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, when it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _quiet_mlflow_logs() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """Call `fn`, retrying transient store errors with exponential backoff."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any store error is retried, the last re-raised
            if attempt == attempts - 1:
                raise
            print(f"warning: tracking write failed ({type(exc).__name__}: {exc}); retrying",
                  file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return None


class Tracker:
    """One MLflow run: params, tags, batched metrics from a writer thread, artifacts, status."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None) -> None:
        _quiet_mlflow_logs()
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(experiment)
        self.resumed = run_id is not None
        if run_id is None:
            run = _retry(self.client.create_run, self.experiment_id, run_name=run_name or None)
            run_id = run.info.run_id
        self.run_id: str = run_id
        self.logged_through = self._last_logged_step() if self.resumed else -1
        self._queue: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="mlflow-writer", daemon=True)
        self._writer.start()

    def _experiment(self, name: str) -> str:
        exp = _retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root_for(self.uri))
        except Exception:  # noqa: BLE001 - another process created it first
            exp = _retry(self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def _last_logged_step(self, key: str = "train/loss") -> int:
        history = _retry(self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=-1)

    # -- writes from the training thread (non-blocking) ---------------------------------------
    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        """Queue `values` at `step`; steps already logged before a resume are dropped."""
        if step <= self.logged_through:
            return
        self._queue.put(("metrics", step, int(time.time() * 1000), values))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            _retry(self.client.log_batch, self.run_id, params=items[i:i + MAX_PARAMS])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            _retry(self.client.log_batch, self.run_id, tags=items)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    # -- the writer thread -------------------------------------------------------------------
    def _write_loop(self) -> None:
        from mlflow.entities import Metric

        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            pending = [item]
            while len(pending) < MAX_BATCH:  # drain what is already queued into one request
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # handled on the next loop turn
                    self._queue.task_done()
                    break
                pending.append(nxt)
            metrics = [Metric(k, float(v), ts, step) for _, step, ts, vals in pending
                       for k, v in vals.items()]
            try:
                for i in range(0, len(metrics), MAX_BATCH):
                    _retry(self.client.log_batch, self.run_id, metrics=metrics[i:i + MAX_BATCH])
            except BaseException as exc:  # noqa: BLE001 - reported by flush(), training goes on
                self._error = exc
            finally:
                for _ in pending:
                    self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued point is written; re-raise a write that failed for good."""
        self._queue.join()
        if self._error is not None:
            err, self._error = self._error, None
            print(f"warning: some metrics could not be written: {err}", file=sys.stderr)

    def finish(self, status: str, tags: dict[str, Any] | None = None) -> None:
        """Flush, record the final `status` tag (and extra tags) and end the MLflow run."""
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=60)
        self.set_tags({"status": status, **(tags or {})})
        _retry(self.client.set_terminated, self.run_id, _MLFLOW_STATUS.get(status, "KILLED"))

    def url_hint(self) -> str:
        """Where a person looks at this run."""
        if self.uri.startswith("sqlite:///"):
            return f"mlflow ui --backend-store-uri {self.uri}  (run {self.run_id})"
        return f"{self.uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
