"""`stability dashboard --serve`: the dashboard and its JSON on localhost, live while runs write.

`DashboardServer` holds one `DashData` in memory and answers

- `GET /` (or /index.html): the page, configured to ask this server for its data;
- `GET /assets/NAME`: the vendored uPlot and the app (a fixed list; nothing else on disk is served);
- `GET /api/overview?v=N`: the overview JSON with its `version`, or `{"version": N, "unchanged":
  true}` while nothing changed since version N (what the page polls);
- `GET /api/chart?q=JSON`: one chart's columns (`reports.downsample.chart_json`) for
  q = {"x0", "x1", "px", "traces": [{"runs": [run ids], "metric": key, "group": bool}]}.

A watcher thread calls `probe()` every `poll_s` seconds (for a store: one search of the
experiment's runs, `mlflow_probe`) and reloads with `build()` when its answer changes, so points
and runs that appear after the server started (a run started later included) reach the page
within about `poll_s` plus one load. The store is only read. The server binds 127.0.0.1 unless
told otherwise and answers only requests addressed to that host (no DNS rebinding); every
answer carries the page's Content-Security-Policy. Ctrl-C (or `stop`) shuts it down cleanly.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import traceback
from collections.abc import Callable, Hashable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from reports import frames as F
from reports.dash_data import DashData
from reports.dashboard import ASSETS, CSP, asset_bytes, page
from reports.downsample import Trace, chart_json

MAX_TRACES = 512
MAX_QUERY = 60_000
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".txt": "text/plain; charset=utf-8"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BadRequest(ValueError):
    """A query the chart endpoint refuses (answered 400 with the reason)."""


def parse_chart_query(text: str, data: DashData) -> tuple[list[Trace], float, float, int]:
    """(traces, x0, x1, px) of an /api/chart query; `BadRequest` for anything malformed."""
    try:
        q = json.loads(text)
        x0, x1, px = float(q.get("x0", 0.0)), float(q.get("x1", 0.0)), int(q.get("px", 600))
        specs = q["traces"]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadRequest(f"malformed chart query: {exc}") from None
    if not (math.isfinite(x0) and math.isfinite(x1)) or x1 < x0:
        raise BadRequest("x0 and x1 must be finite with x0 <= x1")
    if not 16 <= px <= 8000 or not isinstance(specs, list) or len(specs) > MAX_TRACES:
        raise BadRequest(f"px must be in 16..8000 and traces a list of at most {MAX_TRACES}")
    traces = []
    for s in specs:
        if not (isinstance(s, dict) and isinstance(s.get("runs"), list) and isinstance(s.get("metric"), str)):
            raise BadRequest("each trace needs runs (a list of run ids) and metric (a key)")
        parts = tuple(p for r in s["runs"] if (p := data.index.get(str(r), s["metric"])) is not None)
        traces.append(Trace(parts, group=bool(s.get("group"))))
    return traces, x0, x1, px


class DashboardServer:
    """A running dashboard: `url`, `version` (reloads so far, from 1), `data`, `close()`."""

    def __init__(self, build: Callable[[], F.GridData], *, port: int = 0, host: str = "127.0.0.1",
                 poll_s: float = 2.0, window: int = 20, probe: Callable[[], Hashable] | None = None,
                 first: F.GridData | None = None) -> None:
        self.build, self.poll_s, self.window, self.probe = build, poll_s, window, probe
        self.version = 0
        self._last_probe = probe() if probe is not None else None
        self._install(first if first is not None else build())
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._hosts = {f"{h}:{self.port}" for h in (shown, "127.0.0.1", "localhost", "[::1]")}
        self._any_host = host not in LOOPBACK
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                          name="dashboard-http", daemon=True),
                         threading.Thread(target=self._watch, name="dashboard-watch", daemon=True)]
        for t in self._threads:
            t.start()

    def _install(self, grid: F.GridData) -> None:
        data = DashData.from_grid(grid, window=self.window, poll_s=self.poll_s)
        data.overview["version"] = self.version + 1
        self.data, self.version = data, self.version + 1  # one assignment each: readers see old or new
        self._overview = json.dumps(data.overview, allow_nan=False, separators=(",", ":")).encode()

    def reload(self) -> None:
        self._install(self.build())

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                seen = self.probe() if self.probe is not None else object()
                if self.probe is None or seen != self._last_probe:
                    self.reload()
                    self._last_probe = seen
            except Exception:  # keep serving the last good load; try again next time
                traceback.print_exc(file=sys.stderr)

    # ------------------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
                pass

            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                if not server._any_host and self.headers.get("Host", "") not in server._hosts:
                    return self._send(421, b"wrong host", "text/plain; charset=utf-8")
                url = urlsplit(self.path)
                path, query = url.path, parse_qs(url.query)
                if path in ("/", "/index.html"):
                    cfg = {"mode": "live", "poll_s": server.poll_s}
                    return self._send(200, page(cfg).encode(), "text/html; charset=utf-8")
                if path.startswith("/assets/") and path[len("/assets/"):] in ASSETS:
                    name = path[len("/assets/"):]
                    return self._send(200, asset_bytes(name), TYPES[name[name.rfind("."):]])
                if path == "/api/overview":
                    data, body = server.data, server._overview
                    if query.get("v", [""])[0] == str(data.overview["version"]):
                        body = json.dumps({"version": data.overview["version"], "unchanged": True}).encode()
                    return self._send(200, body, "application/json")
                if path == "/api/chart":
                    text = query.get("q", [""])[0]
                    if len(text) > MAX_QUERY:
                        return self._send(413, b"query too long", "text/plain; charset=utf-8")
                    try:
                        traces, x0, x1, px = parse_chart_query(text, server.data)
                    except BadRequest as exc:
                        return self._send(400, str(exc).encode(), "text/plain; charset=utf-8")
                    return self._send(200, chart_json(traces, x0, x1, px).encode(), "application/json")
                return self._send(404, b"not found", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Security-Policy", CSP + "; frame-ancestors 'none'")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header("Cross-Origin-Resource-Policy", "same-origin")
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def close(self) -> None:
        """Stop watching, shut the HTTP server down and release its port."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mlflow_probe(tracking_uri: str, experiment: str) -> Callable[[], Hashable]:
    """A cheap fingerprint of an experiment: its runs with status, end time and latest metric
    values (one search; new points move the latest values, a new run adds a row)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)

    def probe() -> Hashable:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        out, token = [], None
        while True:
            page_ = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                       max_results=10000, page_token=token)
            out += [(r.info.run_id, r.info.status, r.info.end_time, r.data.tags.get("status"),
                     tuple(sorted(r.data.metrics.items()))) for r in page_]
            token = page_.token
            if not token:
                return hash(tuple(sorted(out, key=lambda t: t[0])))

    return probe


def serve_dashboard(build: Callable[[], F.GridData], port: int = 0, host: str = "127.0.0.1", *,
                    poll_s: float = 2.0, window: int = 20, probe: Callable[[], Hashable] | None = None,
                    first: F.GridData | None = None, stop: threading.Event | None = None,
                    on_url: Callable[[str], None] | None = None) -> str:
    """Serve the dashboard until Ctrl-C (or `stop` is set); returns the URL.

    The URL is printed and passed to `on_url` as soon as the server listens (port 0: a free port).
    """
    stop = stop or threading.Event()
    server = DashboardServer(build, port=port, host=host, poll_s=poll_s, window=window, probe=probe,
                             first=first)
    print(f"dashboard: {server.url} (live: looks at the store every {poll_s:g} s; Ctrl-C stops)", flush=True)
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
