"""`stability grid run SPEC --backend slurm`: the cells not yet done as one submitit job array.

Each array task calls `ablations.worker.run_job` on its cell folder: the same code the local pool
runs, so resume, locking and failure records behave the same. Workers log to the tracking URI
given, which must be a server every node can reach (a sqlite file on the submitting machine is
refused). `--backend submitit-local` runs the same path through submitit's local executor (tests,
single machines); there a sqlite store gets the loopback server, as in the local backend.
Cell folders (`--runs-dir`) must be on a file system the nodes share.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ablations.grid_tracking import DONE
from ablations.progress import GridProgress
from ablations.runner import GridOutcome, LocalRunner, _read_json
from ablations.spec import GridSpec
from ablations.worker import run_job
from model.config import ConfigError
from stability.config import parse_override

POLL_S = 2.0


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


class SlurmRunner(LocalRunner):
    """Submits the grid's remaining cells as one job array and follows them to the end."""

    def __init__(self, spec: GridSpec, *, tracking_uri: str | None = None, runs_dir: str | Path = "runs",
                 local: bool = False, params: dict[str, Any] | None = None, progress: bool = True) -> None:
        super().__init__(spec, jobs=None, tracking_uri=tracking_uri, runs_dir=runs_dir, progress=progress)
        self.local = local
        self.params = params or {}
        if not local and (self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri):
            raise ConfigError(f"--tracking-uri: Slurm workers need a tracking server every node "
                                  f"reaches (http://host:port), not {self.uri}")
        self.threads = int(spec.resources.get("cpus", 0) or 0) or self.threads

    def check_resources(self) -> None:
        """Nothing to check here: Slurm places each task on a node with `gpus` GPUs."""

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
                handles = self._executor().map_array(run_job, paths)
            for cell in g.todo:
                display.started(cell)
            pending = {c.cell_id: (c, j, h) for c, j, h in zip(g.todo, jobs, handles)}
            while pending:
                for cid, (cell, job, handle) in list(pending.items()):
                    if not handle.done():
                        continue
                    del pending[cid]
                    try:
                        result = handle.result()
                    except Exception as exc:  # noqa: BLE001 - the task died: record it, go on
                        result = {"status": "failed", "error": (str(exc).strip().splitlines() or [""])[-1]}
                        if not (Path(job.cell_dir) / "result.json").exists():
                            g.writer.mark_failed(job.run_id, f"Slurm task {handle.job_id} ended "
                                                             f"without a result:\n{exc}")
                    status = result.get("status")
                    g.results[cid] = status if status in (*DONE, "failed", "busy") else "failed"
                    display.ended(cell, g.results[cid], result)
                display.update({cid: _read_json(Path(job.cell_dir) / "progress.json")
                                for cid, (_, job, _) in pending.items()})
                time.sleep(POLL_S if not self.local else 0.5)
        finally:
            display.close()
            g.stop_server()
        return self.end(g)
