"""`stability grid run SPEC --backend slurm`: the cells not yet done as one submitit job array.

Each array task (`CellTask`) runs the cell's worker (`python -m ablations.worker job.json`) as a
child process: the same code the local pool runs, so resume, locking, stops and failure records
behave the same.

Preemption and time limits, submitit's way: submitit asks Slurm for its preemption signal before
the time limit (`--signal=USR2@90` by default; `--slurm slurm_signal_delay_s=N`, and
`$SUBMITIT_PREEMPT_SIGNAL` to use another signal) and, when it arrives, calls the task's
`checkpoint`: that stops the worker (it checkpoints after its current step, marks its run
`interrupted` and exits) and hands submitit the same task, which it requeues; the requeued task
resumes the cell from that checkpoint into the same MLflow run. A SIGTERM or SIGINT to a task
(scancel, preemption without requeue) is passed on to its worker too, which ends the cell
interrupted; a rerun of the grid resumes it. The worker gets SIGTERM as well should its task
die first (PDEATHSIG), so it still checkpoints. Stopping the runner (SIGTERM, Ctrl-C) cancels
the tasks not yet done: the same stop for each cell. Workers log to the tracking URI
given, which must be a server every node can reach (a sqlite file on the submitting machine is
refused). `--backend submitit-local` runs the same path through submitit's local executor (tests,
single machines); there a sqlite store gets the loopback server, as in the local backend.
Cell folders (`--runs-dir`) must be on a file system the nodes share.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ablations.grid_tracking import DONE
from ablations.progress import GridProgress
from ablations.runner import STOP_GRACE_S, GridOutcome, GridRunner, read_json
from ablations.spec import GridSpec
from ablations.worker import PARENT_DEATH_ENV, CellJob, cell_lock, child_env, wait_forwarding
from model.config import ConfigError
from stability.config import parse_override
from stability.stop import handling, raise_stopped

POLL_S = 2.0


class CellTask:
    """One Slurm task: the cell's worker as a child process, checkpointable the submitit way."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def __call__(self, job_path: str) -> dict[str, Any]:
        """Run the cell's worker to its end; its result (result.json)."""
        job = CellJob.read(job_path)
        cell_dir = Path(job.cell_dir or Path(job_path).parent)
        env = child_env(job.threads)
        env[PARENT_DEATH_ENV] = "TERM"  # this task killed first: the cell still checkpoints
        with open(cell_dir / "worker.log", "ab") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "ablations.worker", str(job_path)],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        with handling((signal.SIGTERM, signal.SIGINT), raise_stopped):  # submitit ignores TERM
            rc = wait_forwarding(self._proc, forward=signal.SIGTERM)  # once per cell: TERM
        result = read_json(cell_dir / "result.json")
        return result or {"status": "failed", "cell": job.cell_id, "run_id": job.run_id,
                          "error": f"the worker exited with code {rc} and no result"}

    def checkpoint(self, job_path: str):
        """submitit's hook on its preemption / pre-timeout signal: stop the worker, let it write
        its checkpoint, and requeue this task (None, no requeue, when the cell is a result)."""
        from submitit.helpers import DelayedSubmission

        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            _wait_exited(proc)
        result = read_json(Path(job_path).parent / "result.json")
        if result.get("status") in DONE:
            return None
        return DelayedSubmission(CellTask(), job_path)


def _wait_exited(proc: subprocess.Popen) -> None:
    """Block until `proc` has exited, without reaping it: this runs in a signal handler that may
    have interrupted `proc.poll()` itself, so `Popen`'s own wait is not safe here."""
    if proc.returncode is None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)


def parse_slurm_params(items: list[str]) -> dict[str, Any]:
    """`--slurm slurm_partition=gpu` items -> {"slurm_partition": "gpu"} (TOML values)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--slurm: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = parse_override(f"x={value}")["x"]
        except ConfigError:
            out[key.strip()] = value
    return out


class SlurmRunner(GridRunner):
    """Submits the grid's remaining cells as one job array and follows them to the end."""

    def __init__(self, spec: GridSpec, *, tracking_uri: str | None = None, runs_dir: str | Path = "runs",
                 local: bool = False, params: dict[str, Any] | None = None, progress: bool = True) -> None:
        super().__init__(spec, tracking_uri=tracking_uri, runs_dir=runs_dir, progress=progress)
        self.local = local
        self.params = params or {}
        if not local and (self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri):
            raise ConfigError(f"--tracking-uri: Slurm workers need a tracking server every node "
                                  f"reaches (http://host:port), not {self.uri}")

    def _executor(self):
        import submitit

        folder = self.runs_dir / "submitit" / "%j"
        executor = submitit.AutoExecutor(folder=str(folder), cluster="local" if self.local else "slurm")
        r = self.spec.resources
        params: dict[str, Any] = {"name": f"grid-{self.spec.name}", "timeout_min": int(r.get("time_min", 60)),
                                  "cpus_per_task": int(r.get("cpus", 1) or 1),
                                  "gpus_per_node": self.spec.gpus}
        if r.get("mem_gb"):
            params["mem_gb"] = float(r["mem_gb"])
        if not self.local:
            params["slurm_array_parallelism"] = max(1, len(self.cells))
        params.update(self.params)
        executor.update_parameters(**params)
        return executor

    def run(self) -> GridOutcome:
        g = self.begin(shared_writers=True)
        display = GridProgress(self.spec.name, self.cells, g.results, len(g.todo), self.threads,
                               enabled=self.progress)
        try:
            jobs = [self.prepare(c, g.writer, g.parent, g.run_id(c), g.writer.uri) for c in g.todo]
            handles = []
            if jobs:
                paths = [str(Path(j.cell_dir) / "job.json") for j in jobs]
                handles = self._executor().map_array(CellTask(), paths)
            for cell in g.todo:
                display.started(cell)
            pending = {c.cell_id: (c, j, h) for c, j, h in zip(g.todo, jobs, handles)}
            try:
                self._follow(pending, g, display)
            except KeyboardInterrupt:
                self._cancel(pending)
                display.close()
                self.end(g, interrupted=True)
                raise
        finally:
            display.close()
            g.stop_server()
        return self.end(g)

    def _follow(self, pending: dict[str, tuple], g, display: GridProgress) -> None:
        """Poll the tasks until every one has ended; record and show each as it does."""
        while pending:
            for cid, (cell, job, handle) in list(pending.items()):
                if not handle.done():
                    continue
                del pending[cid]
                result = _job_result(handle, job, g)
                status = result.get("status")
                g.results[cid] = status if status in (*DONE, "failed", "busy", "interrupted") else "failed"
                display.ended(cell, g.results[cid], result)
            display.update({cid: read_json(Path(job.cell_dir) / "progress.json")
                            for cid, (_, job, _) in pending.items()})
            time.sleep(POLL_S if not self.local else 0.5)

    def _cancel(self, pending: dict[str, tuple], grace_s: float = STOP_GRACE_S) -> None:
        """The runner was stopped: cancel the tasks not done (scancel on Slurm: SIGTERM to their
        processes; locally submitit's controller stops the task, whose worker gets its SIGTERM);
        locally, wait for the workers to leave their cells (the loopback server must outlive
        them). A second signal ends the wait."""
        for _, _, handle in pending.values():
            with contextlib.suppress(Exception):
                handle.cancel(check=False)
        if not self.local:
            return
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(KeyboardInterrupt):
            for _, job, _ in pending.values():
                with cell_lock(Path(job.cell_dir), wait_s=max(0.0, deadline - time.monotonic())):
                    pass


def _job_result(handle, job: CellJob, g) -> dict[str, Any]:
    """The task's result; when it raised (died, or was not requeued), what the worker wrote, else
    the cell recorded failed."""
    try:
        return handle.result()
    except Exception as exc:  # noqa: BLE001 - the task died: record it, go on
        written = read_json(Path(job.cell_dir) / "result.json")
        if written:
            return written
        g.writer.mark_failed(job.run_id, f"Slurm task {handle.job_id} ended without a result:\n{exc}")
        return {"status": "failed", "error": (str(exc).strip().splitlines() or [""])[-1]}
