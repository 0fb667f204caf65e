"""Shared pieces of the fault-injection suite: the real CLI in a subprocess, a training process to
kill at a chosen step, a size-limited tmpfs, MLflow look-ups and state comparison."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
# Every training subprocess: the tiny preset on one thread (2 threads on a busy 2-core machine are
# several times slower), a small corpus prefix (one tokenizer, cached for the whole session).
TINY = ("--preset", "olmo2-tiny", "--set", "train.threads=1", "--set", "data.max_bytes=300000")
# Where the kills land: random on every run of the suite, reproducible with STABILITY_FAULT_SEED.
SEED = int(os.environ.get("STABILITY_FAULT_SEED", time.time_ns() % 2**31))
WALL_CLOCK = {"train/tokens_per_s"}  # a timing, not part of the trajectory


def env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout importable, one BLAS thread."""
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONUNBUFFERED="1")


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m stability ARGS` in `cwd`, to completion."""
    return subprocess.run([sys.executable, "-m", "stability", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


_BAR = re.compile(r"(\d+)/(\d+) \[")


class TrainProcess:
    """`python -m stability train ...` with its progress bar read live, so that a test can kill it
    (SIGKILL) once it has reached a given step."""

    def __init__(self, cwd: Path, *args: str) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self.step = 0
        self.stdout = ""
        self.stderr = ""
        self.proc = subprocess.Popen([sys.executable, "-m", "stability", "train", *args], cwd=cwd,
                                     env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._threads = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_err(self) -> None:
        buf = b""
        while chunk := self.proc.stderr.read1(4096):
            buf += chunk
            for m in _BAR.finditer(buf[-200:].decode(errors="replace")):
                self.step = max(self.step, int(m.group(1)))
            self.stderr = buf.decode(errors="replace")

    def _read_out(self) -> None:
        self.stdout = self.proc.stdout.read().decode(errors="replace")

    def wait_for_step(self, step: int, timeout: float = 240) -> int:
        """Block until the bar shows `step` or more; returns the step it showed (the process may
        have gone a step or two further: the bar is refreshed every 0.1 s)."""
        deadline = time.monotonic() + timeout
        while self.step < step:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.wait()
                pytest.fail(f"training ended (rc {self.proc.returncode}) before step {step}:\n"
                            f"{self.stderr[-3000:]}")
            time.sleep(0.01)
        return self.step

    def kill_at(self, step: int, timeout: float = 240) -> int:
        """SIGKILL once the bar shows `step` or more; returns the step it showed."""
        shown = self.wait_for_step(step, timeout)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()
        return shown

    def signal_at(self, step: int, sig: int, timeout: float = 240) -> int:
        """Send `sig` once the bar shows `step` or more (the process goes on to handle it);
        returns the step the bar showed."""
        shown = self.wait_for_step(step, timeout)
        os.kill(self.proc.pid, sig)
        return shown

    def wait(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        return rc


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "20m") mounted at `path`; skips the test where mounting is not
    permitted (not root, no CAP_SYS_ADMIN, no `mount`)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a size-limited tmpfs for a disk-full test ({exc})")
    if done.returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs for a disk-full test (needs root / "
                    f"CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path, leave: int) -> Path:
    """Fill the file system of `directory` until about `leave` bytes are free; returns the filler."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    filler = directory / "filler"
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


# ------------------------------------------------------------------------------------- MLflow
def only_run(uri: str, experiment: str = "stability"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    """Every metric of `run` as sorted (step, value) lists."""
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


def assert_each_step_once(hist: dict[str, list[tuple[int, float]]], steps: int) -> None:
    """The per-step series cover 0..steps-1 once each; no series has a step twice."""
    for key in ("train/loss", "grad/norm"):
        assert [s for s, _ in hist[key]] == list(range(steps)), key
    for key, points in hist.items():
        logged = [s for s, _ in points]
        assert len(logged) == len(set(logged)), (key, logged)


# ------------------------------------------------------------------------------------- states
def final_state(cwd: Path, steps: int) -> dict:
    """The final checkpoint, less what is per process: the run id, and torch's global RNG state,
    which each process seeds at random and training never draws from (the data order and the
    init have their own seeded generators), so a resumed process ends with its own."""
    state = torch.load(cwd / "runs" / "r" / f"step_{steps:08d}.pt", weights_only=True)
    for key in ("run_id", "rng_cpu", "rng_cuda"):
        state.pop(key)
    return state


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Bitwise equality of nested checkpoint states (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.nan_to_num(), b.nan_to_num())
                                     and torch.equal(a.isnan(), b.isnan())), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, (where, a, b)
