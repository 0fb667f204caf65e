"""A grid in MLflow (DESIGN.md section 3): one experiment, a parent run, one child run per cell.

The parent run carries tags `stability.role = grid`, `grid`, `baseline`, `n_cells` and the spec as
artifacts (`grid.toml`: the file as written, `grid_cells.json`: every cell resolved). A cell's
child run carries `mlflow.parentRunId`, `arm`, `seed`, `lr`, `cell` and `status`; the trainer
adds the params and the rest. Everything the runner decides on a rerun (skip, resume, retry) and
everything `grid status` prints comes from these tags alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.spec import Cell, GridSpec
from stability.tracking import experiment_id_for
from stability.tracking_io import MLFLOW_STATUS, _quiet_mlflow_logs, _retry

ROLE_TAG = "stability.role"
PARENT_ROLE = "grid"
DONE = ("finished", "diverged")  # a result: never rerun
NOT_DONE = ("running", "interrupted", "pending")  # resumed by a rerun (failed cells are retried)


@dataclass
class CellRun:
    """What MLflow knows about one cell's run."""

    run_id: str
    status: str  # the `status` tag (running | finished | diverged | failed | interrupted)
    parent_run_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float]


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    _quiet_mlflow_logs()
    return MlflowClient(tracking_uri=uri)


class GridStore:
    """The grid's experiment in the store at `uri`."""

    def __init__(self, uri: str, spec: GridSpec) -> None:
        self.uri = uri
        self.spec = spec
        self.client = _client(uri)
        self.experiment_id = experiment_id_for(self.client, spec.name, uri)

    # ------------------------------------------------------------------ reading
    def _search(self, filter_string: str = "") -> list[Any]:
        runs, token = [], None
        while True:
            page = _retry(self.client.search_runs, [self.experiment_id], filter_string=filter_string,
                          max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def parent_run_id(self) -> str | None:
        """The newest parent run of this grid, if any."""
        parents = self._search(f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}'")
        parents.sort(key=lambda r: r.info.start_time or 0, reverse=True)
        return parents[0].info.run_id if parents else None

    def cell_runs(self) -> dict[str, CellRun]:
        """cell id -> its run. When a cell has several runs (e.g. single runs of the same config),
        prefer a finished/diverged one, then the newest."""
        found: dict[str, CellRun] = {}
        for r in self._search():
            tags = r.data.tags
            cell = tags.get("cell")
            if not cell or tags.get(ROLE_TAG) == PARENT_ROLE:
                continue
            run = CellRun(r.info.run_id, tags.get("status", _mlflow_status(r.info.status)),
                          tags.get("mlflow.parentRunId"), dict(tags), dict(r.data.metrics))
            old = found.get(cell)
            if old is None or (run.status in DONE and old.status not in DONE):
                found[cell] = run
        return found

    # ------------------------------------------------------------------ writing
    def open_parent(self) -> str:
        """Reuse this grid's parent run (a rerun) or create it; log the spec; mark it running."""
        run_id = self.parent_run_id()
        tags = {ROLE_TAG: PARENT_ROLE, "grid": self.spec.name, "baseline": self.spec.baseline,
                "status": "running", "n_cells": str(len(self.spec.cells()))}
        if run_id is None:
            run = _retry(self.client.create_run, self.experiment_id, run_name=self.spec.name, tags=tags)
            run_id = run.info.run_id
        else:
            for k, v in tags.items():
                _retry(self.client.set_tag, run_id, k, v)
        if self.spec.path and Path(self.spec.path).is_file():
            _retry(self.client.log_text, run_id, Path(self.spec.path).read_text(), "grid.toml")
        cells = [{"cell": c.cell_id, "arm": c.arm, "seed": c.seed, "lr": c.lr, "run_name": c.run_name}
                 for c in self.spec.cells()]
        _retry(self.client.log_text, run_id, json.dumps({"spec": _jsonable(self.spec.to_dict()),
                                                         "cells": cells}, indent=1), "grid_cells.json")
        return run_id

    def create_cell_run(self, cell: Cell, parent_run_id: str) -> str:
        """The child run a cell's trainer attaches to (created before the worker starts, so a
        worker killed before its first checkpoint is resumed into the same run)."""
        tags = {"mlflow.parentRunId": parent_run_id, "arm": cell.arm, "seed": str(cell.seed),
                "lr": repr(float(cell.lr)), "cell": cell.cell_id, "status": "running"}
        run = _retry(self.client.create_run, self.experiment_id, run_name=cell.run_name, tags=tags)
        return run.info.run_id

    def mark_failed(self, run_id: str, traceback_text: str) -> None:
        """Record a crashed cell: status tag, MLflow status FAILED, the traceback as an artifact."""
        _retry(self.client.log_text, run_id, traceback_text, "traceback.txt")
        _retry(self.client.set_tag, run_id, "status", "failed")
        _retry(self.client.set_terminated, run_id, "FAILED")

    def close_parent(self, run_id: str, counts: dict[str, int], interrupted: bool = False) -> str:
        """Tag the parent with the cell counts and end it: finished when every cell is a result,
        interrupted when the runner or a cell was stopped (and none failed), else failed."""
        status = parent_status(counts, interrupted)
        for k, v in counts.items():
            _retry(self.client.set_tag, run_id, f"cells_{k}", str(v))
        _retry(self.client.set_tag, run_id, "status", status)
        _retry(self.client.set_terminated, run_id, MLFLOW_STATUS[status])
        return status


def parent_status(counts: dict[str, int], interrupted: bool = False) -> str:
    """finished | interrupted | failed, from the cell counts (see `GridStore.close_parent`)."""
    if counts.get("failed", 0):
        return "failed"
    if not any(counts.get(k, 0) for k in NOT_DONE):
        return "finished"
    return "interrupted" if interrupted or counts.get("interrupted", 0) else "failed"


def mark_interrupted(uri: str, run_id: str, signal_name: str) -> None:
    """Record a cell stopped outside its training loop: status `interrupted`, MLflow KILLED."""
    client = _client(uri)
    _retry(client.set_tag, run_id, "status", "interrupted", attempts=3)
    _retry(client.set_tag, run_id, "stop_signal", signal_name, attempts=3)
    _retry(client.set_terminated, run_id, MLFLOW_STATUS["interrupted"], attempts=3)


def _mlflow_status(status: str) -> str:
    """A run without a `status` tag: its MLflow status as ours (KILLED: stopped from outside)."""
    return {"FINISHED": "finished", "FAILED": "failed", "KILLED": "interrupted"}.get(status, "running")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
