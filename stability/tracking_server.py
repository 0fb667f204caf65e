"""A private `mlflow server` on loopback in front of an embedded sqlite store.

Many processes writing one sqlite file hit "database is locked" and schema-migration races; one
server process owning the file and N clients talking HTTP to it do not. The grid runner starts
one for its workers when the tracking URI is a sqlite file, invisibly to the user: same database,
same artifact folder (experiments created beforehand keep their local artifact location, so
clients write artifacts straight to disk).

The server runs in its own process group under a watchdog (`python -m stability.tracking_server`)
that kills the group when its parent dies, so even a runner killed with SIGKILL leaves no server
behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from stability.store import artifact_root_for

START_TIMEOUT_S = 90.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(db_uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The `mlflow server` command line for `db_uri` (one uvicorn worker on loopback)."""
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    base = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    cmd = base + ["server", "--backend-store-uri", db_uri, "--host", host, "--port", str(port),
                  "--workers", "1"]
    artifacts = artifact_root_for(db_uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    return cmd


class LoopbackServer:
    """Start/stop an `mlflow server` over `db_uri`; `uri` is where clients talk to it."""

    def __init__(self, db_uri: str, log_path: str | Path, host: str = "127.0.0.1") -> None:
        self.db_uri = db_uri
        self.host = host
        self.port = free_port(host)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Launch under the watchdog and wait for `/health`; raises RuntimeError with the log tail."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "stability.tracking_server", str(os.getpid()), "--",
               *server_command(self.db_uri, self.port, self.host)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(self.uri + "/health", timeout=1.0).status_code == 200:
                    return self.uri
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"the loopback tracking server did not come up on port {self.port}:\n{tail}")

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None:
            return
        kill_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> LoopbackServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `pgid`, SIGKILL whatever is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            if _only_zombies(pgid):
                return
            time.sleep(0.05)


def _only_zombies(pgid: int) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def _watchdog(parent_pid: int, cmd: list[str]) -> int:
    """Run `cmd` as a child; kill it when `parent_pid` goes away or when we are told to stop."""
    child = subprocess.Popen(cmd)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while child.poll() is None:
        if stopping or os.getppid() != parent_pid:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(0, signal.SIGTERM)  # the server and whatever it spawned share our group
            try:
                return child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(0, signal.SIGKILL)
        time.sleep(0.5)
    return child.returncode

if __name__ == "__main__":
    parent, sep, *command = sys.argv[1:]
    if sep != "--" or not command:
        sys.exit("usage: python -m stability.tracking_server PARENT_PID -- COMMAND...")
    sys.exit(_watchdog(int(parent), command))
