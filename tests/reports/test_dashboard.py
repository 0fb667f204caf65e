"""The dashboard's data, static export, JSON server and CLI (the browser side: test_dashboard_browser.py)."""

from __future__ import annotations

import _thread
import hashlib
import json
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from reports import frames as F
from reports.dash_data import DashData, SeriesIndex, catalogue, describe, merge_events, registry_order
from reports.dashboard import CSP, unpacked, write_dashboard
from reports.serve import DashboardServer, mlflow_probe, serve_dashboard
from reports.stats import compare_arms
from stability import metric_names as M
from tests.reports.factories import synthetic_grid
from tests.reports.mlflow_store import Store

LR = 3e-3
HOSTILE = "</script><img src=x onerror=alert(1)>"


class Scripts(HTMLParser):
    """Every <script> element: (attrs, text)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[tuple[dict, str]] = []
        self.metas: list[dict] = []
        self.tags: list[str] = []
        self._in: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "script":
            self._in = dict(attrs)
            self.scripts.append((self._in, ""))
        if tag == "meta":
            self.metas.append(dict(attrs))

    def handle_data(self, data):
        if self._in is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None


def with_extra_rules(grid: F.GridData) -> F.GridData:
    """Every grad-norm spike also fired the online rule, and one the loss rule: 2-3 rows per event."""
    sp = grid.spikes
    online = sp.assign(series="grad/norm@online", sigma=7.0)
    loss = sp.iloc[[0]].assign(series="train/loss@olmo2", sigma=-20.0, leading_layer=pd.NA,
                               attn_logit_rising=pd.NA)
    grid.spikes = pd.concat([sp, online, loss], ignore_index=True)
    return grid


def spiky_grid() -> F.GridData:
    spikes = {("no_qk_norm", 0, LR): [60, 120], ("olmo0424", 2, LR): [90]}
    return with_extra_rules(synthetic_grid(diverged={("no_qk_norm", 1, LR): 150}, spike_steps=spikes))


# ------------------------------------------------------------------------------------ data
def test_one_event_per_run_and_step_listing_every_rule():
    grid = spiky_grid()
    assert len(grid.spikes) == 7
    events = merge_events(grid.spikes, grid.runs[F.RUN_ID])
    assert [(e["run"], e["step"]) for e in events] == [("r100_no_qk_norm", 60), ("r100_no_qk_norm", 120),
                                                       ("r220_olmo0424", 90)]
    first = events[0]
    assert [(r["metric"], r["rule"], r["sigma"]) for r in first["rules"]] == [
        ("train/loss", "olmo2", -20.0), ("grad/norm", "olmo2", 12.0), ("grad/norm", "online", 7.0)]
    assert first["sigma"] == 20.0 and first["leading_layer"] == 1 and first["leading_sigma"] == 15.0
    assert first["attn_logit_rising"] is True and first["log_z_rising"] is False
    assert [len(e["rules"]) for e in events] == [3, 2, 2]
    assert [e["rewound"] for e in events] == [False, False, False]
    assert merge_events(grid.spikes.iloc[0:0]) == []
    # a spike training went back from (spikes.csv action "rewind", NaN where empty)
    action = grid.spikes["step"].map(lambda s: "rewind" if s == 120 else np.nan)
    rewound = merge_events(grid.spikes.assign(action=action), grid.runs[F.RUN_ID])
    assert [e["rewound"] for e in rewound] == [False, True, False]


def test_a_loss_spike_event_lists_its_precursors_in_the_served_and_the_static_json(tmp_path):
    grid = synthetic_grid(arms=("olmo2", "no_qk_norm"), seeds=(0,), steps=200,
                          spike_steps={("olmo2", 0, LR): [60]}, loss_spike_steps={("olmo2", 0, LR): [120]})
    with DashboardServer(lambda: grid, poll_s=60) as server:
        ov = json.loads(get(server.url + "api/overview")[2])
    events = {(e["run"], e["step"]): e for e in ov["events"]}
    loss = events[("r000_olmo2", 120)]
    assert [r["metric"] for r in loss["rules"]] == [M.TRAIN_CE_LOSS]
    # layer 0's update RMS rose 10 steps ahead, layer 1's grad norm 5 (tests/reports/factories.py)
    assert [(p["signal"], p["name"], p["layer"], p["lead"], p["cadence"]) for p in loss["precursors"]] == [
        (M.UPDATE_RMS, "Adam update RMS", 0, 10, 1), (M.GRAD_NORM, "grad norm", 1, 5, 1)]
    assert all(p["sigma"] > 5 for p in loss["precursors"])
    assert events[("r000_olmo2", 60)]["precursors"] is None  # a grad-norm spike, not a loss spike
    # the report's lead-lag summary, as the report computes it
    from reports import leadlag as LL
    summary = LL.summarize(LL.grid_leadlag(grid)).set_index([F.ARM, "signal"])
    rows = {(r["arm"], r["signal"]): r for r in ov["leadlag"]["rows"]}
    update = rows[("olmo2", "Adam update RMS")]
    want = summary.loc[("olmo2", M.UPDATE_RMS)]
    assert (update["judged"], update["preceded"], update["first"], update["median_lead"]) == \
        (int(want["n"]), want["preceded"], want["first"], want["median_lead"])
    assert ov["leadlag"]["sentences"]["olmo2"] == LL.group_sentence(LL.summarize(LL.grid_leadlag(grid))
                                                                     .query("arm == 'olmo2'"))
    assert "no_qk_norm" not in ov["leadlag"]["sentences"]  # no loss spike there
    payload = json.loads(Scripts(write_dashboard(grid, tmp_path).read_text()).scripts[1][1])
    assert payload["overview"]["events"] == ov["events"]


def test_overview_runs_groups_catalogue_and_the_reports_paired_differences():
    grid = spiky_grid()
    data = DashData.from_grid(grid, window=15)
    ov = data.overview
    json.dumps(ov, allow_nan=False)  # strict JSON: no NaN anywhere
    assert ov["is_grid"] and ov["default_mode"] == "groups" and ov["window"] == 15
    assert [g["label"] for g in ov["groups"]] == ["olmo2", "no_qk_norm", "olmo0424"]
    assert all(len(g["runs"]) == 3 for g in ov["groups"])
    assert ov["statuses"] == {"finished": 8, "diverged": 1}
    assert len(ov["events"]) == 3 and ov["rules"] == ["olmo2", "online"]
    run = next(r for r in ov["runs"] if r["id"] == "r110_no_qk_norm")
    assert run["status_text"] == "diverged @ 150" and run["diverged_at"] == 150 and run["x_max"] == 150
    assert run["params"]["model.qk_norm"] == "none" and M.TRAIN_LOSS in run["metrics"]
    assert run["summary"][F.MAX_GRAD_NORM] == "inf"  # as the report prints it, not blank
    cat = {c["key"]: c for c in ov["metrics"]}
    assert (cat[M.GRAD_NORM]["total"], cat[M.GRAD_NORM]["layers"]) == (True, [0, 1, 2, 3])  # dense layers
    assert cat[M.GRAD_NORM]["what"] == describe(M.GRAD_NORM) != ""  # the registry's description
    assert cat[M.EVAL_LOSS]["what"] == M.REGISTRY.get(M.EVAL_LOSS).what
    assert cat[M.ATTN_LOGIT_MAX]["total"] is False and cat[M.ATTN_LOGIT_MAX]["layers"] == [0, 1, 2, 3]
    assert cat[M.UPDATE_RMS]["layers"] == [0, 1, 2, 3]
    keys = [c["key"] for c in ov["metrics"]]
    assert keys == [k for k in registry_order() if k in cat]  # the registry's order
    # the paired differences are compare_arms' numbers with the report's test and resamples
    ref = compare_arms(grid.runs, "olmo2", test="wilcoxon", n_boot=10_000)
    rows = {(r["arm"], r["metric"]): r for r in ov["compare"]["rows"]}
    for _, r in ref.iterrows():
        got = rows[(r["arm"], r["metric"])]
        for col in ("mean_diff", "ci_low", "ci_high", "n_pairs"):
            want = r[col]
            if pd.isna(want):
                assert got[col] is None, col
            elif np.isinf(want):
                assert got[col] == ("inf" if want > 0 else "-inf"), col
            else:
                assert got[col] == pytest.approx(want), col
    assert ov["compare"]["too_few"] is True  # 3 seeds: no Wilcoxon p-value


def test_groups_per_lr_and_a_plain_experiment_is_runs():
    grid = synthetic_grid(arms=("a", "b"), seeds=(0, 1), lrs=(1e-3, 1e-2), steps=30)
    groups = DashData.from_grid(grid).overview["groups"]
    assert [g["label"] for g in groups] == ["a @ lr 0.001", "a @ lr 0.01", "b @ lr 0.001", "b @ lr 0.01"]
    assert all(len(g["runs"]) == 2 for g in groups)
    plain = synthetic_grid(arms=("run-x", "run-y"), seeds=(0,), steps=30, baseline=None)
    ov = DashData.from_grid(plain).overview
    assert not ov["is_grid"] and ov["default_mode"] == "runs" and ov["compare"] is None


def test_series_index_from_unsorted_frames_and_dense_layers(monkeypatch):
    grid = synthetic_grid(arms=("a",), seeds=(0,), steps=40)
    shuffled = grid.series.sample(frac=1.0, random_state=0)
    by_step = grid.dense.sort_values("step", kind="stable")  # as the dense artifact is written
    a, b = SeriesIndex.from_frames(grid.series, grid.dense), SeriesIndex.from_frames(shuffled, by_step)
    monkeypatch.setattr("reports.dash_data.MAX_BLOCKS", 1)  # "too many blocks to check": sort at once
    c = SeriesIndex.from_frames(shuffled, by_step)
    assert a.data.keys() == b.data.keys() == c.data.keys()
    for k in a.data:
        for other in (b, c):
            np.testing.assert_array_equal(a.data[k][0], other.data[k][0])
            np.testing.assert_array_equal(a.data[k][1], other.data[k][1])
    rid = "r000_a"
    x, y = a.get(rid, M.layer_key(M.GRAD_NORM, 1))  # from the dense artifact
    dense = grid.dense[(grid.dense["key"] == M.GRAD_NORM) & (grid.dense["layer"] == 1)]
    np.testing.assert_array_equal(y, dense["value"].to_numpy())
    # attn/logit_max per layer is an MLflow key: it wins over the dense max over heads
    x, y = a.get(rid, M.layer_key(M.ATTN_LOGIT_MAX, 2))
    mlflow = grid.series[grid.series["metric"] == M.layer_key(M.ATTN_LOGIT_MAX, 2)]
    np.testing.assert_array_equal(y, mlflow["value"].to_numpy())
    # without that key, the dense max over heads is used
    no_key = grid.series[~grid.series["metric"].str.startswith(M.ATTN_LOGIT_MAX)]
    x, y = SeriesIndex.from_frames(no_key, grid.dense).get(rid, M.layer_key(M.ATTN_LOGIT_MAX, 2))
    heads = grid.dense[(grid.dense["key"] == M.ATTN_LOGIT_MAX) & (grid.dense["layer"] == 2)]
    np.testing.assert_allclose(y, heads.groupby("step")["value"].max().to_numpy())
    cat = catalogue(["x/y/layer_3", "train/loss", "zzz"])
    got = [(c["key"], c["total"], c["layers"], bool(c["what"])) for c in cat]  # undeclared keys last
    assert got == [("train/loss", True, [], True), ("x/y", False, [3], False), ("zzz", True, [], False)]


# ------------------------------------------------------------------------------------ static export
def hostile_grid() -> F.GridData:
    grid = synthetic_grid(arms=(HOSTILE, "b"), seeds=(0,), steps=60, spike_steps={(HOSTILE, 0, LR): [30]},
                          name="<b>grid</b> & co", baseline=HOSTILE)
    runs = grid.runs.copy()
    runs.loc[0, F.RUN_NAME] = HOSTILE
    grid.runs = runs
    grid.params["<i>param</i>"] = '"quoted" & <tag> \u2028'
    return grid


def test_static_export_is_json_data_under_a_csp_never_markup(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old.html").write_text("old")
    (tmp_path / "spikes.html").write_text("old")
    index = write_dashboard(hostile_grid(), tmp_path)
    raw = index.read_text()
    assert HOSTILE not in raw and "<img" not in raw and "<b>grid" not in raw and "<tag>" not in raw
    doc = Scripts(raw)
    assert set(doc.tags) <= {"html", "head", "meta", "title", "link", "body", "div", "p", "script"}
    src = [a["src"] for a, _ in doc.scripts if "src" in a]
    data = [(a, t) for a, t in doc.scripts if "src" not in a]
    assert src == ["assets/uPlot.iife.min.js", "assets/app.js"]
    assert [a.get("type") for a, _ in data] == ["application/json", "application/json"]
    assert {"http-equiv": "Content-Security-Policy", "content": CSP} in doc.metas
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "default-src 'none'" in CSP
    payload = json.loads(data[1][1])
    ov = payload["overview"]
    assert ov["name"] == "<b>grid</b> & co" and ov["baseline"] == HOSTILE
    assert ov["runs"][0]["name"] == HOSTILE
    assert ov["runs"][0]["params"]["<i>param</i>"] == '"quoted" & <tag> \u2028'
    assert {s[1] for s in payload["series"]} >= {M.TRAIN_LOSS, M.GRAD_NORM}
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == sorted(
        ["app.css", "app.js", "LICENSE.uPlot.txt", "uPlot.iife.min.js", "uPlot.min.css"])
    assert "MIT License" in (tmp_path / "assets" / "LICENSE.uPlot.txt").read_text()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "spikes.html").exists()


def test_static_export_thins_long_series_and_keeps_full_windows_around_spikes(tmp_path):
    grid = synthetic_grid(arms=("a", "b"), seeds=(0,), steps=5000, spike_steps={("a", 0, LR): [2500]})
    raw = write_dashboard(grid, tmp_path, window=20, max_points=40_000).read_text()
    payload = json.loads(Scripts(raw).scripts[1][1])
    series = {(r, m): (x.tolist(), y) for r, m, x, y in map(unpacked, payload["series"])}
    x, y = series[("r000_a", M.GRAD_NORM)]
    buckets = max(200, min(2000, 40_000 // (2 * len(series))))  # the budget shared by every series
    assert 200 < buckets < 2500 and len(x) <= 2 * buckets + 2 and 2500 in x  # thinned, spike kept
    full = grid.series[(grid.series[F.RUN_ID] == "r000_a") & (grid.series["metric"] == M.GRAD_NORM)]
    assert max(y) == pytest.approx(full["value"].max(), rel=1e-6)  # float32 values
    windows = {(r, m): (x.tolist(), y) for r, m, x, y in map(unpacked, payload["windows"])}
    wx, wy = windows[("r000_a", M.GRAD_NORM)]
    assert wx == list(range(2460, 2541))  # +- 2 x window, every step
    assert ("r000_a", M.layer_key(M.GRAD_NORM, 1)) in windows
    assert ("r000_a", M.PARAM_NORM_EMBED) not in windows
    assert ("r010_b", M.GRAD_NORM) not in windows  # no event in that run


# ------------------------------------------------------------------------------------ server
def get(url: str, host: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def chart_url(base: str, **q) -> str:
    return base + "api/chart?q=" + urllib.parse.quote(json.dumps(q))


def test_server_endpoints_headers_and_refusals():
    grid = spiky_grid()
    with DashboardServer(lambda: grid, poll_s=60) as server:
        base = server.url
        assert base.startswith("http://127.0.0.1:")
        code, headers, body = get(base)
        assert code == 200 and headers["Content-Security-Policy"].startswith(CSP)
        assert headers["X-Content-Type-Options"] == "nosniff" and b'"mode":"live"' in body
        code, _, body = get(base + "api/overview")
        ov = json.loads(body)
        assert ov["version"] == 1 and len(ov["runs"]) == 9
        assert json.loads(get(base + "api/overview?v=1")[2]) == {"version": 1, "unchanged": True}
        # a raw window: the values as logged
        q = {"x0": 55, "x1": 65, "px": 400, "traces": [{"runs": ["r100_no_qk_norm"], "metric": M.GRAD_NORM}]}
        cols = json.loads(get(chart_url(base, **q))[2])
        s = grid.series
        ref = s[(s[F.RUN_ID] == "r100_no_qk_norm") & (s["metric"] == M.GRAD_NORM)]
        ref = ref[(ref["step"] >= 55) & (ref["step"] <= 65)]
        assert cols["raw"] and cols["x"] == ref["step"].tolist()
        np.testing.assert_allclose(cols["traces"][0]["y"], ref["value"], rtol=1e-4)
        group = {"x0": 0, "x1": 199, "px": 400,
                 "traces": [{"runs": g["runs"], "metric": M.TRAIN_LOSS, "group": True} for g in ov["groups"]]}
        cols = json.loads(get(chart_url(base, **group))[2])
        assert set(cols["traces"][0]) == {"y", "lo", "hi"}
        assert all(lo <= y <= hi for lo, y, hi in zip(cols["traces"][1]["lo"], cols["traces"][1]["y"],
                                                      cols["traces"][1]["hi"]) if y is not None)
        assert get(base + "assets/app.js")[1]["Content-Type"].startswith("text/javascript")
        for bad in ("assets/../serve.py", "assets/%2e%2e/serve.py", "reports/serve.py", "api/nope", "x"):
            assert get(base + bad)[0] == 404, bad
        for q in ("{", json.dumps({"x0": 0, "x1": float("nan"), "traces": []}).replace("NaN", '"nan"'),
                  json.dumps({"x0": 5, "x1": 1, "traces": []}), json.dumps({"traces": [{"runs": "r1"}]}),
                  json.dumps({"px": 10**6, "traces": []})):
            assert get(base + "api/chart?q=" + urllib.parse.quote(q))[0] == 400, q
        assert get(base, host=f"evil.example:{server.port}")[0] == 421  # DNS rebinding
        assert get(base, host=f"localhost:{server.port}")[0] == 200


def _flip(grid: F.GridData, running_for: int):
    calls = []

    def build() -> F.GridData:
        calls.append(time.monotonic())
        runs = grid.runs.copy()
        if len(calls) <= running_for:
            runs.loc[1, F.STATUS] = "running"
        return F.GridData(grid.name, runs, grid.series, grid.dense, grid.spikes, grid.params, grid.baseline)

    return build, calls


def test_server_reloads_when_the_probe_changes_and_keeps_serving_through_a_failing_build(capsys):
    grid = synthetic_grid(arms=("olmo2", "no_qk_norm"), seeds=(0,), steps=40)
    build, calls = _flip(grid, running_for=1)
    seen = {"fp": 0, "fail": False}

    def flaky() -> F.GridData:
        if seen["fail"]:
            seen["fail"] = False
            raise RuntimeError("store busy")
        return build()

    with DashboardServer(flaky, poll_s=0.05, probe=lambda: seen["fp"]) as server:
        assert server.data.overview["live"] and server.version == 1
        time.sleep(0.3)
        assert len(calls) == 1  # the probe says nothing changed: no reload
        seen["fail"], seen["fp"] = True, 1
        deadline = time.monotonic() + 10
        while server.version < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.version == 2 and not server.data.overview["live"]  # the failed reload was retried
        assert json.loads(get(server.url + "api/overview?v=1")[2])["version"] == 2
    assert "store busy" in capsys.readouterr().err


@pytest.fixture
def ctrl_c_handler():
    """Python's own Ctrl-C handler for the test (a background job starts with SIGINT ignored)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_serve_dashboard_stops_cleanly_on_ctrl_c_and_on_stop(ctrl_c_handler):
    grid = synthetic_grid(arms=("a",), seeds=(0,), steps=20)
    urls: list[str] = []

    def ready(url: str) -> None:
        urls.append(url)
        assert get(url)[0] == 200
        threading.Timer(0.2, _thread.interrupt_main).start()  # what Ctrl-C does

    url = serve_dashboard(lambda: grid, poll_s=0.05, on_url=ready)
    assert url == urls[0]
    assert not [t for t in threading.enumerate() if t.name.startswith("dashboard-")]
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    stop = threading.Event()
    thread = threading.Thread(target=serve_dashboard, args=(lambda: grid,),
                              kwargs={"stop": stop, "on_url": urls.append})
    thread.start()
    while len(urls) < 2:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


# ------------------------------------------------------------------------------------ real store, CLI
def test_cli_export_and_serve_on_a_store_moved_from_another_machine(tmp_path, mlflow_template, capsys):
    from stability.cli import main

    store = Store(tmp_path / "written", mlflow_template)
    parent = store.grid_parent("a")
    for arm in ("a", "b"):
        for seed in (0, 1):
            store.add_run(f"g/{arm}/s{seed}", arm=arm, seed=seed, parent=parent,
                          spikes=((20, "grad/norm@olmo2"), (20, "grad/norm@online")) if arm == "b" else ())
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "written", moved)  # artifact paths recorded under written/ are gone now
    uri = f"sqlite:///{moved / 'mlflow.db'}"
    out = tmp_path / "dash"
    assert main(["dashboard", "dash-exp", "--tracking-uri", uri, "--out", str(out), "--no-attach"]) == 0
    assert "dashboard: file://" in capsys.readouterr().out
    payload = json.loads(Scripts((out / "index.html").read_text()).scripts[1][1])
    assert len(payload["overview"]["events"]) == 2  # spikes.csv re-rooted beside the moved store
    assert payload["overview"]["is_grid"] and payload["overview"]["baseline"] == "a"

    from reports.load import load_grid

    digest = hashlib.sha256((moved / "mlflow.db").read_bytes()).hexdigest()
    with DashboardServer(lambda: load_grid("dash-exp", uri), poll_s=0.1,
                         probe=mlflow_probe(uri, "dash-exp")) as server:
        ov = json.loads(get(server.url + "api/overview")[2])
        assert len(ov["runs"]) == 4 and len(ov["events"]) == 2 and ov["version"] == 1
        time.sleep(0.4)
        assert server.version == 1  # nothing written: no reload
    assert hashlib.sha256((moved / "mlflow.db").read_bytes()).hexdigest() == digest  # read only

    parser_args = ["dashboard", "x", "--serve", "--refresh", "3", "--host", "127.0.0.1", "--port", "0"]
    from stability.cli import build_parser

    ns = build_parser().parse_args(parser_args)
    assert ns.poll == 3.0 and ns.serve and ns.host == "127.0.0.1"
    assert build_parser().parse_args(["dashboard", "x"]).poll == 2.0
