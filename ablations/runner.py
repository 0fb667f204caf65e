"""`stability grid run SPEC`: run every cell of a grid, resumably, locally or on Slurm.

A cell is its config's content hash. On every (re)run the runner asks MLflow what exists:
finished and diverged cells are results and are skipped; a cell whose run is `interrupted` (the
runner was stopped), still `running` (the runner was killed) or `failed` resumes from its newest
checkpoint in `runs/<grid>/<cell>/` into the same MLflow run (its child run is created before its
worker starts, so even a cell killed before its first checkpoint has one run). The tracker never
logs a step twice into a resumed run.

Local backend: one worker process per cell (`python -m ablations.worker`), at most `jobs` at once,
CPU threads split between them, `resources.gpus` GPUs per cell where there are GPUs (default one);
a cell with several ranks runs them under torchrun inside its worker. A worker dies with the
runner (PDEATHSIG) and holds a lock on its cell folder. Workers run in their own sessions, so a
Ctrl-C reaches them once, through the runner: SIGTERM, SIGINT or a user signal to the runner is
passed on to every worker, which checkpoints after its current step and marks its run
`interrupted`; the runner waits for them, marks the grid's parent run interrupted and exits
128 + the signal. A second signal is passed on too (a second Ctrl-C: the workers give up the
checkpoint being written and keep the previous one). With an embedded sqlite store and more
than one worker, the runner puts a private `mlflow server` on loopback in front of the file
(`stability.tracking_server`), so parallel writers never hit "database is locked".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ablations.grid_tracking import DONE, CellRun, GridStore
from ablations.progress import GridProgress
from ablations.spec import Cell, GridSpec
from ablations.status import cell_statuses, counts
from ablations.worker import EXIT_BUSY, PARENT_DEATH_ENV, CellJob, child_env, log_tail
from model.config import ConfigError
from stability.config import to_toml
from stability.store import RUNNING, Tag, absolute_uri, resolve_uri

if TYPE_CHECKING:
    from stability.tracking_server import LoopbackServer

POLL_S = 0.5
STOP_GRACE_S = 120.0  # how long stopped workers get to checkpoint before they are killed


@dataclass
class Slot:
    """A running worker."""

    cell: Cell
    job: CellJob
    proc: subprocess.Popen
    gpus: list[str]
    started: float = field(default_factory=time.monotonic)


@dataclass
class GridSession:
    """A grid being run: the real store, the one workers write to (a loopback server in front of
    a shared sqlite file, else the same), the parent run and what MLflow already had."""

    store: GridStore
    writer: GridStore
    parent: str
    existing: dict[str, CellRun]
    todo: list[Cell]
    results: dict[str, str]  # cell id -> status, the done ones first
    server: LoopbackServer | None = None

    def run_id(self, cell: Cell) -> str | None:
        old = self.existing.get(cell.cell_id)
        return old.run_id if old else None

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass
class GridOutcome:
    parent_run_id: str
    counts: dict[str, int]
    status: str  # finished (every cell is a result) | failed
    results: dict[str, str]  # cell id -> status


def default_jobs(spec: GridSpec, n_gpus: int) -> int:
    gpus = max(1, spec.gpus)
    if n_gpus:
        return max(1, n_gpus // gpus)
    cpus = int(spec.resources.get("cpus", 0) or 0)
    return max(1, (os.cpu_count() or 1) // cpus) if cpus else 1


def check_resources(spec: GridSpec, visible_gpus: list[str]) -> None:
    """A cell must fit on this machine: no more GPUs per cell than are visible."""
    want = spec.gpus
    if visible_gpus and want > len(visible_gpus):
        raise ConfigError(f"resources.gpus: {want} per cell, but this machine shows "
                          f"{len(visible_gpus)} ({','.join(visible_gpus)})")


class GridRunner(ABC):
    """What every backend shares: the grid's cells, their folders and job files, and the grid's
    begin and end in MLflow (parent run, what is done, the loopback server). A backend runs the
    remaining cells its own way (`run`); `ablations.backends` names the backends."""

    def __init__(self, spec: GridSpec, *, tracking_uri: str | None = None,
                 runs_dir: str | Path = "runs", progress: bool = True, threads: int = 0) -> None:
        self.spec = spec
        self.cells = spec.cells()
        self.uri = absolute_uri(resolve_uri(tracking_uri))
        self.runs_dir = Path(runs_dir).resolve() / spec.name
        self.progress = progress
        self.gpus: list[str] = []  # GPUs this machine hands out to cells (local backend)
        self.threads = threads or int(spec.resources.get("cpus", 0) or 0) or 1

    @abstractmethod
    def run(self) -> GridOutcome:
        """Run every cell not done yet; resumable (a rerun continues)."""

    # ------------------------------------------------------------------ preparing cells
    def cell_dir(self, cell: Cell) -> Path:
        return self.runs_dir / cell.cell_id

    def prepare(self, cell: Cell, store: GridStore, parent_run_id: str, run_id: str | None,
                worker_uri: str) -> CellJob:
        """Write the cell's folder (config.toml, job.json); create its MLflow run when new."""
        d = self.cell_dir(cell)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.toml").write_text(to_toml(cell.config))
        if run_id is None:
            run_id = store.create_cell_run(cell, parent_run_id)
        else:
            store.client.set_tag(run_id, Tag.STATUS, RUNNING)
        job = CellJob(cell.cell_id, cell.arm, cell.seed, cell.lr, run_id, parent_run_id, worker_uri,
                      self.threads, str(d), ranks=self.spec.ranks, store_uri=self.uri)
        job.write(d / "job.json")
        for stale in ("progress.json", "result.json"):  # an earlier attempt's
            (d / stale).unlink(missing_ok=True)
        return job

    # ------------------------------------------------------------------ the loop
    def begin(self, shared_writers: bool) -> GridSession:
        """Open the grid in MLflow (experiment created on the real store first, parent run, what is
        done); with several writers on a sqlite file, start the loopback server they talk to."""
        store = GridStore(self.uri, self.spec)
        parent = store.open_parent()
        existing = store.cell_runs()
        done = {c.cell_id: existing[c.cell_id].status for c in self.cells  # this spec's cells only
                if c.cell_id in existing and existing[c.cell_id].status in DONE}
        todo = [c for c in self.cells if c.cell_id not in done]
        session = GridSession(store, store, parent, existing, todo, dict(done))
        if self.uri.startswith("sqlite:") and todo and shared_writers:
            from stability.tracking_server import LoopbackServer

            session.server = LoopbackServer(self.uri, self.runs_dir / "tracking-server.log")
            session.writer = GridStore(session.server.start(), self.spec)
        return session

    def end(self, session: GridSession, interrupted: bool = False) -> GridOutcome:
        """Stop the loopback server; count the cells from MLflow and close the parent run."""
        session.stop_server()
        final = counts(cell_statuses(self.spec, session.store, with_steps=False))
        status = session.store.close_parent(session.parent, final, interrupted)
        return GridOutcome(session.parent, final, status, session.results)


class LocalRunner(GridRunner):
    """Runs a grid's cells as local worker processes, `jobs` at a time."""

    def __init__(self, spec: GridSpec, *, jobs: int | None = None, tracking_uri: str | None = None,
                 runs_dir: str | Path = "runs", progress: bool = True) -> None:
        gpus = _visible_gpus()
        check_resources(spec, gpus)
        self.jobs = jobs or default_jobs(spec, len(gpus))
        cpus = os.cpu_count() or 1
        threads = int(spec.resources.get("cpus", 0) or 0) if jobs is None else 0
        super().__init__(spec, tracking_uri=tracking_uri, runs_dir=runs_dir, progress=progress,
                         threads=threads or max(1, cpus // self.jobs))
        self.gpus = gpus

    def launch(self, cell: Cell, job: CellJob, gpus: list[str]) -> Slot:
        env = child_env(job.threads)
        env[PARENT_DEATH_ENV] = "KILL"  # a killed runner leaves no cell behind
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        elif self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        log = open(Path(job.cell_dir) / "worker.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            cmd = [sys.executable, "-m", "ablations.worker", str(Path(job.cell_dir) / "job.json")]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)  # signals come through us
        finally:
            log.close()
        return Slot(cell, job, proc, gpus)

    def run(self) -> GridOutcome:
        g = self.begin(shared_writers=self.jobs > 1)
        todo: deque[Cell] = deque(g.todo)
        results = g.results
        display = GridProgress(self.spec.name, self.cells, results, self.jobs, self.threads,
                               enabled=self.progress)
        running: dict[str, Slot] = {}
        free_gpus = list(self.gpus)
        take = max(1, self.spec.gpus) if self.gpus else 0  # GPUs a cell gets
        try:
            while todo or running:
                while todo and len(running) < self.jobs and len(free_gpus) >= take:
                    cell = todo.popleft()
                    job = self.prepare(cell, g.writer, g.parent, g.run_id(cell), g.writer.uri)
                    gpus, free_gpus = free_gpus[:take], free_gpus[take:]
                    running[cell.cell_id] = self.launch(cell, job, gpus)
                    display.started(cell)
                for cid, slot in list(running.items()):
                    if slot.proc.poll() is None:
                        continue
                    del running[cid]
                    free_gpus.extend(slot.gpus)
                    self._record_end(slot, g, display)
                display.update({cid: read_json(Path(s.job.cell_dir) / "progress.json")
                                for cid, s in running.items()})
                time.sleep(POLL_S)
        except KeyboardInterrupt as exc:  # SIGTERM / SIGINT / a user signal (ablations.commands)
            self._stop_workers(running, getattr(exc, "signum", signal.SIGINT))
            for slot in running.values():
                self._record_end(slot, g, display)
            display.close()
            self.end(g, interrupted=True)
            raise
        except BaseException:
            self._stop_workers(running)
            display.close()
            g.stop_server()
            raise
        display.close()
        return self.end(g)

    def _record_end(self, slot: Slot, g: GridSession, display: GridProgress) -> None:
        """A worker has exited: its cell's status (recorded in MLflow when it could not) shown."""
        g.results[slot.cell.cell_id] = self._finish_cell(slot, slot.proc.returncode, g.writer)
        result = read_json(Path(slot.job.cell_dir) / "result.json")
        display.ended(slot.cell, g.results[slot.cell.cell_id], result)

    def _finish_cell(self, slot: Slot, rc: int, store: GridStore) -> str:
        result = read_json(Path(slot.job.cell_dir) / "result.json")
        if rc == EXIT_BUSY:
            return "busy"
        status = result.get("status") if result else None
        if status in (*DONE, "interrupted"):
            return status
        if status != "failed":  # killed, segfault, out of memory: the worker could not say
            tail = log_tail(Path(slot.job.cell_dir) / "worker.log")
            store.mark_failed(slot.job.run_id, f"worker exited with code {rc} and no result\n\n{tail}")
        return "failed"

    @staticmethod
    def _stop_workers(running: dict[str, Slot], signum: int = signal.SIGTERM,
                      grace_s: float = STOP_GRACE_S) -> None:
        """Pass `signum` on to every worker (each checkpoints after its current step) and wait up
        to `grace_s` for them; a further signal meanwhile is passed on too (a second SIGINT makes
        them give up the checkpoint being written) and cuts the wait to 10 s; then kill the rest."""
        _signal_workers(running, signum)
        deadline = time.monotonic() + grace_s
        while any(s.proc.poll() is None for s in running.values()) and time.monotonic() < deadline:
            try:
                time.sleep(0.1)
            except KeyboardInterrupt as again:
                _signal_workers(running, getattr(again, "signum", signal.SIGINT))
                deadline = min(deadline, time.monotonic() + 10.0)
        for slot in running.values():
            if slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()


def _signal_workers(running: dict[str, Slot], signum: int) -> None:
    for slot in running.values():
        if slot.proc.poll() is None:
            slot.proc.send_signal(signum)


def _visible_gpus() -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        n = 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v for v in visible.split(",") if v] if visible else [str(i) for i in range(n)]
    return ids[:n]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
