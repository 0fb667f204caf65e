"""The interactive dashboard on a 64-run grid with 100k points per headline series, in headless Chromium.

The store has bench_load.py's layout (a grid parent, `--runs` children over its 8 arms, the same
tags and params, dense Parquet parts and a spikes.csv per run) at `--steps` steps:

- every step: the headline series train/loss, grad/norm and logits/log_z_mean;
- every 10 steps: train/lr, the two spike scores, spike/count and grad/norm/layer_i (per layer);
- every 50 steps: attn/logit_max/layer_i; eval/loss every 500 steps;
- dense: per-layer grad norms every 10 steps, attention logits per head every 50;
- spikes.csv: 0-2 events per run, each flagged by two or three rules (one event per step).

Runs, tags, params and artifacts go through MLflow; the metric rows are bulk-inserted into the
store's sqlite tables (`metrics` and, for each key's last point, `latest_metrics`: what
`log_batch` writes), since a hundred thousand `log_batch` calls would take hours. Writing is not
timed; `--store DIR` keeps it for the next invocation.

Timed: `load_grid` + `DashData` (the server's load), then in headless Chromium (Debian's, over
CDP) the served overview: navigation start to the first chart drawn and to every chart drawn
(median of `--repeats` fresh loads), a hover (mouse event to the readouts of every chart
updated and painted, median and max of 20), and the size of the JSON answers a zoomed-out
chart gets (arm bands of all runs; all 64 runs overlaid; one run's page). Then the same for the
static export opened from a file.

    python benchmarks/bench_dashboard.py                          # 64 runs x 100k steps
    python benchmarks/bench_dashboard.py --runs 8 --steps 10000   # a quick look
    python benchmarks/bench_dashboard.py --screenshots docs/images --experiment quick \\
        --tracking-uri sqlite:///mlflow.db                        # the README's screenshots
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stability import metric_names as M  # noqa: E402
from stability.dense import DenseWriter  # noqa: E402
from stability.spikes import SpikeEvent, events_to_frame  # noqa: E402
from stability.store import artifact_root_for, quiet_mlflow_logs  # noqa: E402

GRID = "bench-dash"
ARMS = ("olmo2", "no_qk_norm", "pre_norm", "no_z_loss", "olmo0424", "eps_1e-5", "emb_wd", "init")
HEADLINE = (M.TRAIN_LOSS, M.GRAD_NORM, M.LOGITS_LOG_Z_MEAN)
READOUT = (M.TRAIN_LR, M.SPIKE_SCORE_LOSS, M.SPIKE_SCORE_GRAD_NORM, M.SPIKE_COUNT)
RULES = ("grad/norm@olmo2", "grad/norm@olmo_core", "grad/norm@online")


def run_series(steps: int, layers: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, steps, values) of one run at the cadence in the module docstring."""
    s = np.arange(steps)
    decay = np.exp(-s / (steps / 20))
    out = [(M.TRAIN_LOSS, s, 3.0 + 5.0 * decay + 0.05 * rng.standard_normal(steps)),
           (M.GRAD_NORM, s, 0.3 + decay + 0.05 * np.abs(rng.standard_normal(steps))),
           (M.LOGITS_LOG_Z_MEAN, s, 7.0 + 0.5 * (1 - decay) + 0.05 * rng.standard_normal(steps))]
    s10 = s[9::10]
    out += [(k, s10, rng.random(s10.size)) for k in READOUT]
    base = 0.3 + decay[9::10]
    out += [(M.layer_key(M.GRAD_NORM, i), s10, base / (i + 1) * (1 + 0.1 * rng.random(s10.size)))
            for i in range(layers)]
    s50 = s[::50]
    out += [(M.layer_key(M.ATTN_LOGIT_MAX, i), s50, 5 + 10 * rng.random(s50.size)) for i in range(layers)]
    ev = s[499::500]
    out.append((M.EVAL_LOSS, ev, 3.5 + decay[ev] + 0.01 * rng.random(ev.size)))
    return out


def build_store(root: Path, n_runs: int, steps: int, layers: int, heads: int = 4) -> tuple[str, int]:
    """Write the synthetic grid under `root`; return (tracking URI, metric points written)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    quiet_mlflow_logs()
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(GRID, artifact_location=artifact_root_for(uri))
    parent = client.create_run(exp, run_name=GRID, tags={"stability.role": "grid", "baseline": "olmo2",
                                                         "grid": GRID}).info.run_id
    db = sqlite3.connect(root / "mlflow.db")
    db.execute("PRAGMA synchronous=OFF")
    total, t0 = 0, time.perf_counter()
    for i in range(n_runs):
        arm, seed = ARMS[i % len(ARMS)], i // len(ARMS)
        rng = np.random.default_rng(i)
        tags = {"mlflow.parentRunId": parent, "arm": arm, "seed": str(seed), "lr": "0.03",
                "cell": f"{i:012x}", "recipe": "olmo2", "status": "finished"}
        rid = client.create_run(exp, run_name=f"{GRID}/{arm}/s{seed}", tags=tags).info.run_id
        params = {"model.d_model": "128", "model.init": "normal", "model.n_layers": str(layers),
                  "optim.lr": "0.03", "train.seed": str(seed), "train.steps": str(steps)}
        client.log_batch(rid, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("git_commit", "0" * 40)])
        series = run_series(steps, layers, rng)
        events = [int(st) for st in rng.choice(np.arange(1000, steps - 1000), size=i % 3, replace=False)]
        gnorm = series[1][2]
        for st in events:
            gnorm[st] *= 25.0  # the spike the events describe
        ts = int(time.time() * 1000)
        rows = [(k, float(v), ts + int(st), rid, int(st)) for k, xs, ys in series
                for st, v in zip(xs[:-1].tolist(), ys[:-1].tolist())]
        db.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                       "VALUES (?, ?, ?, ?, ?, 0)", rows)
        db.commit()
        client.log_batch(rid, metrics=[Metric(k, float(ys[-1]), ts + int(xs[-1]), int(xs[-1]))
                                       for k, xs, ys in series])  # the last points: latest_metrics too
        total += sum(xs.size for _, xs, _ in series)
        with tempfile.TemporaryDirectory() as tmp:
            with DenseWriter(Path(tmp) / "dense") as w:
                for st in range(9, steps, 10):
                    w.add(st, M.GRAD_NORM, (0.3 + rng.random(layers)) / np.arange(1, layers + 1))
                for st in range(0, steps, 50):
                    w.add(st, M.ATTN_LOGIT_MAX, 10 * rng.random((layers, heads)))
            client.log_artifacts(rid, str(Path(tmp) / "dense"), "dense")
        rows = [SpikeEvent(step=st, series=rule, value=float(gnorm[st]), sigma=8.0 + j, mean=1.0, std=1.0,
                           leading_layer=int(rng.integers(layers)), leading_sigma=9.0,
                           attn_logit_rising=bool(j % 2), log_z_rising=False)
                for st in events for j, rule in enumerate(RULES[: 2 + st % 2])]
        client.log_text(rid, events_to_frame(rows).to_csv(index=False), M.SPIKES_ARTIFACT)
        client.set_terminated(rid, "FINISHED")
        if i % 8 == 7:
            print(f"  wrote {i + 1}/{n_runs} runs, {total:,} points, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
    client.set_terminated(parent, "FINISHED")
    db.close()
    return uri, total


def browser():
    from tests.reports import chromium
    from tests.reports.cdp import Browser

    path, why = chromium.ensure_chromium()
    if path is None:
        sys.exit(f"no headless Chromium: {why}")
    return Browser(path)


def all_drawn(page, timeout: float = 60) -> list[dict]:
    js = ("(() => { const p = __dash.ready && __dash.panels(); return p && p.every(i => i.heat ? i.loaded"
          " : i.points > 0) ? {panels: p.map(i => ({title: i.title, points: i.points}))} : null; })()")
    return page.wait_for(js, timeout, interval=0.02)["panels"]


def open_timed(page, url: str) -> tuple[float, float, int]:
    """(ms to the first chart, ms to every chart, charts), navigation start = performance's 0."""
    page.goto("about:blank")
    page.goto(url)
    panels = all_drawn(page)
    first = page.eval("__dash.firstChart")
    every = page.eval("performance.now()")  # an upper bound: polled every 20 ms
    return first, every, len(panels)


def hover_timed(page, n: int = 20) -> list[float]:
    """ms from a mouse move to every chart's readout updated and the next frame painted."""
    out = []
    for k in range(n):
        step_frac = 0.1 + 0.8 * k / n
        at = page.eval(f"(() => {{ const p = __dash.panels()[0]; return __dash.point(0, p.xmin + {step_frac}"
                       " * (p.xmax - p.xmin)); })()")
        before = page.eval("__dash.hover.painted")
        page.hover(at["x"], at["y"])
        done = f"__dash.hover.painted > {before} && __dash.hover.painted > __dash.hover.event"
        page.wait_for(done, 10, 0.01)
        out.append(page.eval("__dash.hover.painted - __dash.hover.event"))
    return out


def json_sizes(base: str, ov: dict, px: int = 520) -> dict[str, tuple[int, float]]:
    """bytes and ms of the zoomed-out chart answers the page asks for."""
    def ask(traces: list[dict], x1: float) -> tuple[int, float]:
        q = urllib.parse.quote(json.dumps({"x0": 0, "x1": x1, "px": px, "traces": traces}))
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{base}api/chart?q={q}", timeout=60) as r:
            body = r.read()
        return len(body), 1000 * (time.perf_counter() - t0)

    x1 = ov["x_max"]
    groups = [{"runs": g["runs"], "metric": M.TRAIN_LOSS, "group": True} for g in ov["groups"]]
    runs = [{"runs": [r["id"]], "metric": M.GRAD_NORM} for r in ov["runs"]]
    layers = [{"runs": [ov["runs"][0]["id"]], "metric": k} for k in ov["runs"][0]["metrics"]
              if k.startswith(M.GRAD_NORM + "/layer_")]
    return {f"train/loss, {len(groups)} arm bands of {len(ov['runs'])} runs": ask(groups, x1),
            f"grad/norm, all {len(runs)} runs overlaid": ask(runs, x1),
            "one run: grad/norm": ask(runs[:1], x1),
            f"one run: grad norm per layer ({len(layers)} layers)": ask(layers, x1)}


def bench(args) -> None:
    from reports.dash_data import DashData
    from reports.dashboard import write_dashboard
    from reports.load import load_grid
    from reports.serve import DashboardServer

    root = Path(args.store).resolve() if args.store else Path(tempfile.mkdtemp(prefix="bench-dash-"))
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root}/mlflow.db"
    if not (root / "mlflow.db").exists():
        t0 = time.perf_counter()
        uri, points = build_store(root, args.runs, args.steps, args.layers)
        print(f"store: {points:,} points written in {time.perf_counter() - t0:.0f} s (not timed)",
              file=sys.stderr)
    t0 = time.perf_counter()
    grid = load_grid(GRID, uri)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    DashData.from_grid(grid)
    t_data = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_head = grid.series[grid.series["metric"] == M.TRAIN_LOSS].groupby("run_id").size().median()
    print(f"grid: {len(grid.runs)} runs, {len(grid.series):,} points, {n_head:,.0f} points per headline "
          f"series; load_grid {t_load:.1f} s, DashData {t_data:.1f} s, peak RSS {rss:,.0f} MiB")
    with browser() as b, DashboardServer(lambda: load_grid(GRID, uri), first=grid, poll_s=60) as server:
        del grid
        page = b.new_page(1400, 1000)
        ov = json.loads(urllib.request.urlopen(server.url + "api/overview", timeout=60).read())
        runs = [open_timed(page, server.url) for _ in range(args.repeats)]
        first = statistics.median(r[0] for r in runs)
        every = statistics.median(r[1] for r in runs)
        print(f"served overview: first chart {first:.0f} ms, all {runs[0][2]} charts {every:.0f} ms "
              f"(median of {args.repeats}: {', '.join(f'{r[0]:.0f}/{r[1]:.0f}' for r in runs)})")
        hovers = hover_timed(page)
        print(f"hover (all {runs[0][2]} charts' readouts, {len(ov['groups'])} arm bands each): median "
              f"{statistics.median(hovers):.1f} ms, max {max(hovers):.1f} ms")
        for what, (size, ms) in json_sizes(server.url, ov).items():
            print(f"zoomed-out chart JSON, {what}: {size / 1024:.0f} KB ({ms:.0f} ms)")
        run = ov["runs"][1]["id"]
        t = open_timed(page, f"{server.url}#/run/{urllib.parse.quote(run)}")
        print(f"served run page: first chart {t[0]:.0f} ms, all {t[2]} charts {t[1]:.0f} ms")
        if page.errors:
            print("page errors:", page.errors)
        out = root / "static"
        t0 = time.perf_counter()
        index = write_dashboard(load_grid(GRID, uri), out)
        t_write = time.perf_counter() - t0
        runs = [open_timed(page, index.as_uri()) for _ in range(args.repeats)]
        first, every = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"static export: {index.stat().st_size / 2**20:.1f} MB written in {t_write:.1f} s (load "
              f"included); from the file: first chart {first:.0f} ms, all charts {every:.0f} ms")
        hovers = hover_timed(page)
        print(f"static hover: median {statistics.median(hovers):.1f} ms, max {max(hovers):.1f} ms")


def screenshots(args) -> None:
    """overview.png, run.png and spike.png of an experiment, served from its store."""
    from reports.load import load_grid
    from reports.serve import DashboardServer

    out = Path(args.screenshots)
    out.mkdir(parents=True, exist_ok=True)
    grid = load_grid(args.experiment, args.tracking_uri)
    with browser() as b, DashboardServer(lambda: grid, poll_s=60) as server:
        ov = json.loads(urllib.request.urlopen(server.url + "api/overview", timeout=60).read())
        ev = max(ov["events"], key=lambda e: e["sigma"] or 0)
        run = urllib.parse.quote(ev["run"])
        page = b.new_page(1400, 1000)
        for name, route, height in (("overview", "", 2400), ("run", f"#/run/{run}", 1300),
                                    ("spike", f"#/spike/{run}/{ev['step']}", 1150)):
            page.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False})
            page.goto("about:blank")
            page.goto(server.url + route)
            all_drawn(page)
            # a hover readout in the picture: the global grad norm just before the biggest spike
            chart = 2 if name == "overview" else 1
            at = page.eval(f"__dash.point({chart}, {ev['step'] - 3}, 0.4)")
            page.hover(at["x"], at["y"])
            time.sleep(0.5)
            page.screenshot(out / f"{name}.png")
            print(f"{out / name}.png", page.errors or "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", default="", help="keep the synthetic store in DIR (reused if there)")
    ap.add_argument("--screenshots", default="", help="instead: write overview/run/spike PNGs to DIR")
    ap.add_argument("--experiment", default="quick", help="with --screenshots: the experiment")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="with --screenshots: its store")
    args = ap.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.screenshots:
        screenshots(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
