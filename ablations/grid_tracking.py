"""A grid in MLflow: one experiment, a parent run, one child run per cell (tag names and
statuses: `stability.store`).

The parent run carries tags `stability.role = grid`, `grid`, `baseline`, `n_cells` and the spec as
artifacts (`grid.toml`: the file as written, `grid_cells.json`: every cell resolved). A cell's
child run carries `mlflow.parentRunId`, `arm`, `seed`, `lr`, `cell` and `status`; the trainer
adds the params and the rest. Everything the runner decides on a rerun (skip, resume, retry) and
everything `grid status` prints comes from these tags alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.spec import Cell, GridSpec
from stability import store
from stability.store import GRID_ROLE, Tag, retry

DONE = store.RESULTS  # a result: never rerun
NOT_DONE = (store.RUNNING, store.INTERRUPTED, "pending")  # resumed by a rerun (failed: retried)


@dataclass
class CellRun:
    """What MLflow knows about one cell's run."""

    run_id: str
    status: str  # the `status` tag (running | finished | diverged | failed | interrupted)
    parent_run_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float]


class GridStore:
    """The grid's experiment in the store at `uri`."""

    def __init__(self, uri: str, spec: GridSpec) -> None:
        self.uri = uri
        self.spec = spec
        self.client = store.client(uri)
        self.experiment_id = store.experiment_id(self.client, spec.name, uri)

    # ------------------------------------------------------------------ reading
    def _search(self, filter_string: str = "") -> list[Any]:
        runs, token = [], None
        while True:
            page = retry(self.client.search_runs, [self.experiment_id], filter_string=filter_string,
                          max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def parent_run_id(self) -> str | None:
        """The newest parent run of this grid, if any."""
        parents = self._search(f"tags.`{Tag.ROLE}` = '{GRID_ROLE}'")
        parents.sort(key=lambda r: r.info.start_time or 0, reverse=True)
        return parents[0].info.run_id if parents else None

    def cell_runs(self) -> dict[str, CellRun]:
        """cell id -> its run. When a cell has several runs (e.g. single runs of the same config),
        prefer a finished/diverged one, then the newest."""
        found: dict[str, CellRun] = {}
        for r in self._search():
            tags = r.data.tags
            cell = tags.get(Tag.CELL)
            if not cell or tags.get(Tag.ROLE) == GRID_ROLE:
                continue
            run = CellRun(r.info.run_id, store.status_of(tags, r.info.status),
                          tags.get(Tag.PARENT_RUN_ID), dict(tags), dict(r.data.metrics))
            old = found.get(cell)
            if old is None or (run.status in DONE and old.status not in DONE):
                found[cell] = run
        return found

    # ------------------------------------------------------------------ writing
    def open_parent(self) -> str:
        """Reuse this grid's parent run (a rerun) or create it; log the spec; mark it running."""
        run_id = self.parent_run_id()
        tags = {Tag.ROLE: GRID_ROLE, Tag.GRID: self.spec.name, Tag.BASELINE: self.spec.baseline,
                Tag.STATUS: store.RUNNING, Tag.N_CELLS: str(len(self.spec.cells()))}
        if run_id is None:
            run = retry(self.client.create_run, self.experiment_id, run_name=self.spec.name, tags=tags)
            run_id = run.info.run_id
            self._log_spec_params(run_id)
        else:
            for k, v in tags.items():
                retry(self.client.set_tag, run_id, k, v)
        if self.spec.path and Path(self.spec.path).is_file():
            retry(self.client.log_text, run_id, Path(self.spec.path).read_text(), "grid.toml")
        cells = [{"cell": c.cell_id, "arm": c.arm, "seed": c.seed, "lr": c.lr, "run_name": c.run_name}
                 for c in self.spec.cells()]
        retry(self.client.log_text, run_id, json.dumps({"spec": _jsonable(self.spec.to_dict()),
                                                         "cells": cells}, indent=1), "grid_cells.json")
        return run_id

    def _log_spec_params(self, run_id: str) -> None:
        """The spec as params (`preset`, `baseline`, `seeds`, `lrs`, `budget.*`, `base.*`,
        `arms.<arm>.*`), so MLflow's runs table shows the study on its parent row."""
        from mlflow.entities import Param

        params = {k: store.param_value(v) for k, v in _flat(_spec_facts(self.spec)).items()}
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow's limit per request
            retry(self.client.log_batch, run_id, params=items[i:i + 100])

    def log_grid_figures(self, run_id: str) -> None:
        """The study at a glance on the parent run: cells per status and, per arm (and LR), the
        mean final eval loss of the seeds that finished."""
        from mlflow.entities import Metric

        runs = self.cell_runs()
        ours = {c.cell_id: c for c in self.spec.cells()}
        statuses = [r.status for cid, r in runs.items() if cid in ours]
        values = {f"cells/{s}": float(statuses.count(s)) for s in store.STATUSES}
        values["cells/pending"] = float(len(ours) - len(statuses))
        multi_lr = len({c.lr for c in ours.values()}) > 1
        losses: dict[str, list[float]] = {}
        for cid, r in runs.items():
            if cid in ours and r.status == store.FINISHED and "eval/loss" in r.metrics:
                cell = ours[cid]
                key = f"arm/{cell.arm}" + (f"/lr_{cell.lr:g}" if multi_lr else "") + "/final_eval_loss"
                losses.setdefault(key, []).append(r.metrics["eval/loss"])
        values.update({k: sum(v) / len(v) for k, v in losses.items()})
        now = int(time.time() * 1000)
        retry(self.client.log_batch, run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])

    def create_cell_run(self, cell: Cell, parent_run_id: str) -> str:
        """The child run a cell's trainer attaches to (created before the worker starts, so a
        worker killed before its first checkpoint is resumed into the same run)."""
        tags = {Tag.PARENT_RUN_ID: parent_run_id, Tag.ARM: cell.arm, Tag.SEED: str(cell.seed),
                Tag.LR: repr(float(cell.lr)), Tag.CELL: cell.cell_id, Tag.STATUS: store.RUNNING}
        run = retry(self.client.create_run, self.experiment_id, run_name=cell.run_name, tags=tags)
        return run.info.run_id

    def mark_failed(self, run_id: str, traceback_text: str) -> None:
        """Record a crashed cell: status tag, MLflow status FAILED, the traceback as an artifact."""
        store.mark_failed(self.client, run_id, traceback_text)

    def close_parent(self, run_id: str, counts: dict[str, int], interrupted: bool = False) -> str:
        """Tag the parent with the cell counts and end it: finished when every cell is a result,
        interrupted when the runner or a cell was stopped (and none failed), else failed."""
        status = parent_status(counts, interrupted)
        self.log_grid_figures(run_id)
        store.end_run(self.client, run_id, status, {f"cells_{k}": v for k, v in counts.items()})
        return status


def parent_status(counts: dict[str, int], interrupted: bool = False) -> str:
    """finished | interrupted | failed, from the cell counts (see `GridStore.close_parent`)."""
    if counts.get(store.FAILED, 0):
        return store.FAILED
    if not any(counts.get(k, 0) for k in NOT_DONE):
        return store.FINISHED
    return store.INTERRUPTED if interrupted or counts.get(store.INTERRUPTED, 0) else store.FAILED


def mark_interrupted(uri: str, run_id: str, signal_name: str) -> None:
    """Record a cell stopped outside its training loop: status `interrupted`, MLflow KILLED."""
    store.end_run(store.client(uri), run_id, store.INTERRUPTED, {Tag.STOP_SIGNAL: signal_name},
                  attempts=3)


def _spec_facts(spec: GridSpec) -> dict[str, Any]:
    """What defines the study: everything of the spec but its file path and description."""
    facts = {k: v for k, v in spec.to_dict().items() if k not in ("path", "description", "name")}
    facts["arms"] = {arm: overrides or "no overrides" for arm, overrides in facts["arms"].items()}
    return facts


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
