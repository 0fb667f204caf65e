"""Run one grid cell: `python -m ablations.worker CELL_DIR/job.json` (local pool) or
`run_job(path)` (inside a Slurm task through submitit). Same code on both paths.

A cell with several data-parallel ranks (`resources.ranks` or `gpus` > 1): `run_job` holds the
cell's lock and launches `torchrun --standalone --nproc_per_node N -m ablations.worker job.json`
in the same task; every rank trains its share (stability.distributed), rank 0 writes progress and
its result (`rank0_result.json`), a crashing rank leaves `traceback.rank<R>.txt`.

The cell folder (`runs/<grid>/<cell id>/`) holds `job.json` (what to run, written by the runner),
`config.toml` (the resolved config), the checkpoints, `progress.json` (rewritten at every read-out:
the runner's display reads it), `result.json` (written last) and `traceback.txt` when it crashed.
A lock file keeps two processes from running the same cell at once.

Stops: SIGTERM, SIGINT and the user signals (stability.stop) end the cell after its current step
with a checkpoint; its run is marked `interrupted` (MLflow KILLED), the worker exits 128 + the
signal and a rerun of the grid resumes the cell. A multi-rank cell passes the signal on to
torchrun, which passes it on to the ranks; they stop together at a read-out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EXIT_BUSY = 75  # another process holds the cell's lock
LOCK_WAIT_S = 30.0
# The signal a worker gets when the process that started it dies (default KILL: a killed runner
# leaves no cells behind); a Slurm task asks for TERM, so that its cell still checkpoints.
PARENT_DEATH_ENV = "STABILITY_PARENT_DEATH_SIGNAL"


@dataclass
class CellJob:
    """Everything a worker needs, as written to `job.json`."""

    cell_id: str
    arm: str
    seed: int
    lr: float
    run_id: str
    parent_run_id: str
    uri: str  # where the worker writes (the runner's loopback server, or the store itself)
    threads: int = 0  # CPU threads of the cell, all its ranks together
    cell_dir: str = ""
    ranks: int = 1  # data-parallel processes
    store_uri: str = ""  # the store the user named ("" = `uri`): what the run records

    def write(self, path: Path) -> None:
        _write_json(path, asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> CellJob:
        return cls(**json.loads(Path(path).read_text()))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: get `sig` when the process that started us dies (no orphaned cells)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG


def parent_death_signal() -> signal.Signals:
    """The signal `$STABILITY_PARENT_DEATH_SIGNAL` names (TERM, KILL, ...), else SIGKILL."""
    name = os.environ.get(PARENT_DEATH_ENV, "KILL").upper()
    return getattr(signal.Signals, name if name.startswith("SIG") else f"SIG{name}", signal.SIGKILL)


def wait_forwarding(proc: subprocess.Popen, forward: int | None = None) -> int:
    """Wait for `proc`; a stop signal that arrives meanwhile (raised here as `Stopped`) is passed on
    to it, as itself or as `forward`. Polls rather than blocks: a signal handler that waits for the
    same child (submitit's, in `ablations.slurm`) must not find `Popen`'s wait lock taken."""
    while True:
        try:
            while proc.poll() is None:
                time.sleep(0.2)
            return proc.returncode
        except KeyboardInterrupt as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(forward or getattr(exc, "signum", signal.SIGINT))


@contextlib.contextmanager
def cell_lock(cell_dir: Path, wait_s: float = LOCK_WAIT_S):
    """Hold `cell_dir/lock` (flock); yields False when another process keeps it past `wait_s`."""
    fd = os.open(cell_dir / "lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.2)
        yield True
    finally:
        os.close(fd)


def progress_file(path: Path, steps: int):
    """The callback that keeps a cell's `progress.json` (the runner's bar reads it) current."""
    from stability import metric_names as M
    from stability.callbacks import OnReadOut

    t0 = time.monotonic()

    def write(step: int, last: dict[str, float]) -> None:
        _write_json(path, {"step": step, "steps": steps, "loss": last.get(M.TRAIN_LOSS),
                           "tokens_per_s": last.get(M.TRAIN_TOKENS_PER_S),
                           "spikes": last.get(M.SPIKE_COUNT, 0), "elapsed_s": time.monotonic() - t0})
    return OnReadOut(write)


def _record_interrupted(job: CellJob, signum: int) -> None:
    """A cell stopped before its trainer could say so (building data or the model, or a second
    Ctrl-C): status `interrupted`, MLflow KILLED; its newest checkpoint, if any, is untouched."""
    try:
        from ablations.grid_tracking import mark_interrupted

        mark_interrupted(job.uri, job.run_id, signal.Signals(signum).name)
    except Exception as exc:  # noqa: BLE001 - the rerun resumes it all the same
        print(f"could not record the interruption in MLflow: {exc}", file=sys.stderr)


def _record_failure(job: CellJob, cell_dir: Path, text: str) -> None:
    (cell_dir / "traceback.txt").write_text(text)
    try:
        from stability import store

        store.mark_failed(store.client(job.uri), job.run_id, text, attempts=3)
    except Exception as exc:  # noqa: BLE001 - the runner records it from the file instead
        print(f"could not record the failure in MLflow: {exc}", file=sys.stderr)


def run_job(job_path: str | Path) -> dict[str, Any]:
    """Train the cell described by `job_path`; returns (and writes) its result. Never raises for a
    training error: the cell is recorded failed (status tag, traceback artifact) instead."""
    job = CellJob.read(job_path)
    cell_dir = Path(job.cell_dir or Path(job_path).parent)
    with cell_lock(cell_dir) as locked:
        if not locked:
            return {"status": "busy", "cell": job.cell_id}
        (cell_dir / "result.json").unlink(missing_ok=True)
        try:
            result = _train_ranks(job, cell_dir) if job.ranks > 1 else _train(job, cell_dir)
        except KeyboardInterrupt as exc:  # stopped before (or while leaving) the training loop
            signum = getattr(exc, "signum", signal.SIGINT)
            _record_interrupted(job, signum)
            result = {"status": "interrupted", "cell": job.cell_id, "run_id": job.run_id,
                      "signal": signal.Signals(signum).name}
        except Exception:  # noqa: BLE001 - any crash is this cell's result, not the grid's
            text = traceback.format_exc()
            _record_failure(job, cell_dir, text)
            result = {"status": "failed", "cell": job.cell_id, "run_id": job.run_id,
                      "error": text.strip().splitlines()[-1]}
        _write_json(cell_dir / "result.json", result)
        return result


def _rank_threads(job: CellJob) -> int:
    """This process's CPU threads: the cell's share per rank (0 = torch's default)."""
    return max(1, job.threads // job.ranks) if job.threads else 0


def _train(job: CellJob, cell_dir: Path) -> dict[str, Any]:
    """Train the cell in this process: the whole cell, or one rank of it under torchrun."""
    import torch

    from stability.checkpoint import list_checkpoints
    from stability.config import load_config
    from stability.dist_checkpoint import list_sharded
    from stability.stop import stop_signals
    from stability.train import Trainer

    threads = _rank_threads(job)
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(None, str(cell_dir / "config.toml"))
    cfg.tracking.uri = job.store_uri or job.uri
    cfg.tracking.via = job.uri if job.store_uri and job.store_uri != job.uri else ""
    cfg.tracking.run_id = job.run_id
    cfg.tracking.parent_run_id = job.parent_run_id
    cfg.tracking.arm = job.arm
    cfg.train.checkpoint_dir = str(cell_dir)
    cfg.train.threads = threads
    resume = bool(list_checkpoints(cell_dir) or list_sharded(cell_dir))
    progress = progress_file(cell_dir / "progress.json", cfg.train.steps)
    trainer = Trainer(cfg, resume=resume, progress=False, stop_signals=stop_signals(),
                      callbacks=[progress] if os.environ.get("RANK", "0") == "0" else [])  # torchrun
    res = trainer.run()
    return {"status": res.status, "cell": job.cell_id, "run_id": res.run_id, "steps": res.steps,
            "train_loss": res.final_loss, "eval_loss": res.eval_loss,
            "diverged_at_step": res.diverged_at_step, "signal": res.stop_signal}


def child_env(threads: int) -> dict[str, str]:
    """This environment for a child process: this checkout importable, `threads` OpenMP/MKL threads."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _train_ranks(job: CellJob, cell_dir: Path) -> dict[str, Any]:
    """Run the cell's ranks under torchrun in this task and wait; rank 0's result, or the cell
    recorded failed with the ranks' tracebacks (or the launcher's output) when there is none."""
    rank_result = cell_dir / "rank0_result.json"
    for stale in (rank_result, *cell_dir.glob("traceback.rank*.txt")):
        stale.unlink(missing_ok=True)
    env = child_env(_rank_threads(job) or 1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc_per_node={job.ranks}", "-m", "ablations.worker",
           str(cell_dir / "job.json")]
    log_path = cell_dir / "ranks.log"
    with open(log_path, "ab") as log:
        # torchrun dies with this worker (which dies with the runner), its ranks die with it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=die_with_parent)
    rc = wait_forwarding(proc)  # a stop: torchrun passes it on, the ranks checkpoint and stop
    if rank_result.exists():  # finished, diverged, or interrupted (torchrun then exits non-zero)
        return json.loads(rank_result.read_text())
    texts = [p.read_text() for p in sorted(cell_dir.glob("traceback.rank*.txt"))]
    text = "\n".join(texts) or f"torchrun exited with code {rc}\n\n{log_tail(log_path)}"
    _record_failure(job, cell_dir, text)
    return {"status": "failed", "cell": job.cell_id, "run_id": job.run_id,
            "error": text.strip().splitlines()[-1] if text.strip() else f"exit code {rc}"}


def log_tail(path: Path, n: int = 6000) -> str:
    """The last `n` characters of a log file (for failure records)."""
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"(no {path.name})"


def _rank_main(job_path: str) -> int:
    """One rank of a multi-rank cell (started by torchrun from `_train_ranks`)."""
    job = CellJob.read(job_path)
    cell_dir = Path(job.cell_dir or Path(job_path).parent)
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = _train(job, cell_dir)
    except Exception:  # noqa: BLE001 - the launcher records the cell failed from this file
        (cell_dir / f"traceback.rank{rank}.txt").write_text(f"rank {rank}:\n{traceback.format_exc()}")
        return 1
    if rank == 0:
        _write_json(cell_dir / "rank0_result.json", result)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ablations.worker CELL_DIR/job.json", file=sys.stderr)
        return 2
    die_with_parent(parent_death_signal())
    from stability.distributed import launched_by_torchrun
    from stability.stop import raise_stopped, stop_signals

    for sig in stop_signals():  # until the trainer takes over: stop at once, nothing to save yet
        signal.signal(sig, raise_stopped)
    if launched_by_torchrun():
        return _rank_main(args[0])
    result = run_job(args[0])
    return exit_status(result)


def exit_status(result: dict[str, Any]) -> int:
    """0 for a result, 128 + the signal for an interrupted cell, EXIT_BUSY, else 1."""
    status = result["status"]
    if status == "busy":
        print(f"cell {result['cell']} is being run by another process", file=sys.stderr)
        return EXIT_BUSY
    if status == "interrupted":
        return 128 + signal.Signals[result.get("signal") or "SIGTERM"]
    return 0 if status in ("finished", "diverged") else 1


if __name__ == "__main__":
    sys.exit(main())
