"""Serve the spike dashboard on localhost and keep it fresh while runs are still going.

`serve_dashboard` builds the dashboard, serves `out_dir` with `http.server.ThreadingHTTPServer`
and rebuilds it in a background thread every `refresh_s` seconds while any run is `running`
(pages then reload themselves via a meta refresh; the last build, with nothing running, drops
it). Ctrl-C (or setting `stop`) shuts the server down cleanly. `DashboardServer` is the same
thing without blocking, for notebooks and tests.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from reports import frames as F
from reports.dashboard import write_dashboard


class _Handler(SimpleHTTPRequestHandler):
    """Static files from the dashboard folder, never cached, without per-request logging."""

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass


class DashboardServer:
    """A running dashboard: `url`, `builds` (how many times it was written), `live`, `close()`."""

    def __init__(self, build: Callable[[], F.GridData], out_dir: str | os.PathLike, *, port: int = 0,
                 refresh_s: float = 10, host: str = "127.0.0.1") -> None:
        self.build, self.out_dir, self.refresh_s = build, Path(out_dir), refresh_s
        self.builds = 0
        self.live = self.rebuild()
        handler = functools.partial(_Handler, directory=str(self.out_dir))
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/index.html"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                          name="dashboard-http", daemon=True),
                         threading.Thread(target=self._refresh_loop, name="dashboard-rebuild", daemon=True)]
        for t in self._threads:
            t.start()

    def rebuild(self) -> bool:
        """Build the grid and write the dashboard; True while any run is still running."""
        grid = self.build()
        live = bool((grid.runs[F.STATUS].astype(str) == "running").any())
        write_dashboard(grid, self.out_dir, refresh_s=self.refresh_s if live else None)
        self.builds += 1
        return live

    def _refresh_loop(self) -> None:
        while self.live and not self._stop.wait(self.refresh_s):
            try:
                self.live = self.rebuild()
            except Exception:  # keep serving the last good pages; try again next time
                traceback.print_exc(file=sys.stderr)

    def close(self) -> None:
        """Stop rebuilding, shut the HTTP server down and release its port."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_dashboard(build: Callable[[], F.GridData], out_dir: str | os.PathLike, port: int = 0,
                    refresh_s: float = 10, host: str = "127.0.0.1", *, stop: threading.Event | None = None,
                    on_url: Callable[[str], None] | None = None) -> str:
    """Build, serve and keep rebuilding the dashboard until Ctrl-C (or `stop` is set); returns the URL.

    The URL is printed and passed to `on_url` as soon as the server listens (port 0: a free port).
    """
    stop = stop or threading.Event()
    server = DashboardServer(build, out_dir, port=port, refresh_s=refresh_s, host=host)
    print(f"dashboard: {server.url}", flush=True)
    try:
        if on_url is not None:
            on_url(server.url)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("stopping dashboard server", flush=True)
    finally:
        server.close()
    return server.url
