"""The interactive spike dashboard's page, and its static export.

One page (`index.html` + `assets/`: the vendored uPlot and app.js) serves both uses. Served by
`reports.serve`, it asks JSON endpoints for each chart, downsampled on the server for the
visible step range and pixel width. Written by `write_dashboard`, the grid's series are embedded
as JSON in a `<script type="application/json">` block (each series thinned to its bucket min and
max when it is long, with full-resolution windows around every spike) and app.js downsamples them
in the browser the same way, so the file opened offline (attached to the MLflow parent run,
mailed) has the same views.

Every string from the store reaches the page as JSON data, which app.js puts into the DOM as text;
`script_json` escapes `<`, `>` and `&` so no value can close the data block. The page's
Content-Security-Policy allows scripts and styles from its own origin only: no inline script, no
inline event handler, nothing remote.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from reports import frames as F
from reports.dash_data import HEADLINE, LAYER_RE, DashData
from reports.downsample import minmax_points, window
from reports.tables import atomic_write_text
from stability import metric_names as M

ASSET_DIR = Path(__file__).with_name("dash_assets")
ASSETS = ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE.uPlot.txt", "app.js", "app.css")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'")
STATIC_POINTS = 2_000_000  # embedded points over all series (a ~20 MB page at most)
STATIC_BUCKETS = (200, 2000)  # per series: the bucket count's bounds
WINDOW_KEYS = (*HEADLINE, M.LOGITS_LOG_Z_MAX)  # plus every grad/norm and attn/logit_max layer
WINDOW_PREFIXES = (M.GRAD_NORM, M.ATTN_LOGIT_MAX)
OLD_LAYOUT = ("spikes.html",)  # files of the SVG dashboard this page replaced


def script_json(obj: Any) -> str:
    """JSON that is safe inside a `<script type="application/json">` block (no NaN allowed)."""
    return escape_script(json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False))


def escape_script(text: str) -> str:
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def page(config: dict[str, Any], data_json: str | None = None) -> str:
    """index.html: the shell app.js fills in; `data_json` (already escaped) for a static page."""
    data = f'<script type="application/json" id="dash-data">{data_json}</script>' if data_json else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<title>stability dashboard</title><link rel="icon" href="data:,">'
            '<link rel="stylesheet" href="assets/uPlot.min.css"><link rel="stylesheet" href="assets/app.css">'
            '</head><body><div id="app"><p class="loading">loading…</p></div>'
            f'<script type="application/json" id="dash-config">{script_json(config)}</script>{data}'
            '<script src="assets/uPlot.iife.min.js"></script><script src="assets/app.js"></script>'
            "</body></html>\n")


def asset_bytes(name: str) -> bytes:
    if name not in ASSETS:
        raise KeyError(name)
    return (ASSET_DIR / name).read_bytes()


def _window_keys(keys: list[str]) -> list[str]:
    out = [k for k in keys if k in WINDOW_KEYS]
    for k in keys:
        hit = LAYER_RE.match(k)
        if hit and hit.group(1) in WINDOW_PREFIXES:
            out.append(k)
    return out


def packed(rid: str, metric: str, x: np.ndarray, y: np.ndarray) -> str:
    """One embedded series: [run, metric, steps, values, step type], the arrays as base64 of
    little-endian int32 steps ("i4"; float64 "f8" when a step is not one) and float32 values,
    which the page turns into typed arrays without parsing a number per point."""
    kind = "i4" if x.size == 0 or (np.all(x == np.round(x)) and np.abs(x).max() < 2**31) else "f8"
    xs = base64.b64encode(np.asarray(x, f"<{kind}").tobytes()).decode()
    ys = base64.b64encode(np.asarray(y, "<f4").tobytes()).decode()
    return f'[{json.dumps(rid)},{json.dumps(metric)},"{xs}","{ys}","{kind}"]'


def unpacked(item: list) -> tuple[str, str, np.ndarray, np.ndarray]:
    """`packed` read back: (run, metric, steps, values)."""
    rid, metric, xs, ys, kind = item
    return (rid, metric, np.frombuffer(base64.b64decode(xs), f"<{kind}").astype(float),
            np.frombuffer(base64.b64decode(ys), "<f4").astype(float))


def static_data(data: DashData, points: int = STATIC_POINTS) -> str:
    """The embedded JSON of a static page: the overview, every series (thinned to at most
    2 x `STATIC_BUCKETS[1]` points, fewer when there are many) and around each spike event the
    full-resolution window (+- 2 x window steps) of the series a spike view draws, each
    `packed`."""
    items = sorted(data.index.data.items())
    lo, hi = STATIC_BUCKETS
    buckets = max(lo, min(hi, points // max(2 * len(items), 1)))
    series, thinned = [], set()
    for (rid, metric), (x, y) in items:
        xs, ys = minmax_points(x, y, buckets)
        if xs.size < x.size:
            thinned.add((rid, metric))
        series.append(packed(rid, metric, xs, ys))
    windows = []
    half = 2 * int(data.overview["window"])
    for ev in data.overview["events"]:
        rid, step = ev["run"], ev["step"]
        for metric in _window_keys(data.index.keys_of(rid)):
            if (rid, metric) not in thinned:
                continue
            xs, ys = window(*data.index.data[(rid, metric)], step - half, step + half)
            windows.append(packed(rid, metric, xs, ys))
    text = (f'{{"overview":{json.dumps(data.overview, allow_nan=False, separators=(",", ":"))},'
            f'"series":[{",".join(series)}],"windows":[{",".join(windows)}]}}')
    return escape_script(text)


def write_dashboard(grid: F.GridData, out_dir: str | os.PathLike, *, window: int = 20,
                    max_points: int = STATIC_POINTS) -> Path:
    """Write the static dashboard of `grid` under `out_dir` (index.html + assets/); returns
    index.html. `max_points`: the embedded points over all series (see `static_data`). Pages of
    the SVG dashboard this replaced (runs/*.html, spikes.html) are removed."""
    out = Path(out_dir)
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        shutil.copyfile(ASSET_DIR / name, out / "assets" / name)
    data = DashData.from_grid(grid, window=window)
    index = out / "index.html"
    atomic_write_text(index, page({"mode": "static"}, static_data(data, max_points)))
    for name in OLD_LAYOUT:
        (out / name).unlink(missing_ok=True)
    old_runs = out / "runs"
    if old_runs.is_dir():
        for stale in old_runs.glob("*.html"):
            stale.unlink(missing_ok=True)
        if not any(old_runs.iterdir()):
            old_runs.rmdir()
    return index
