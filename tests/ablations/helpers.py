"""Shared by the grid tests that drive `stability grid ...` as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def grid_cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    """`python -m stability ARGS` in `cwd` with this checkout importable; output captured."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "stability", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `ready()` while `proc` runs; fail with its output if it ends first, or after timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
    pytest.fail(f"{what} never happened within {timeout_s:.0f} s")
