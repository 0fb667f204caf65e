"""The dashboard in real headless Chromium (Debian's, driven over CDP): offline static page, hover
readout, metric / smoothing / log controls, linked zoom, spike markers and events, hostile
names, and a run started while `--serve` runs."""

from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pandas as pd
import pytest

from reports import frames as F
from reports.dashboard import write_dashboard
from reports.load import load_grid
from reports.serve import DashboardServer, mlflow_probe
from stability import metric_names as M
from tests.reports import chromium
from tests.reports.cdp import Browser
from tests.reports.factories import synthetic_grid
from tests.reports.mlflow_store import Store

LR = 3e-3
HOSTILE = "</script><img src=x onerror=alert(1)>"
PWN = '"><img src=x onerror="window.__pwned=1"><svg onload="window.__pwned=2">'


@pytest.fixture(scope="module")
def browser():
    path, why = chromium.ensure_chromium()
    if path is None:
        pytest.skip(f"headless Chromium not available: {why}")
    with Browser(path) as b:
        yield b


@pytest.fixture
def page(browser):
    p = browser.new_page(1400, 1000)
    yield p
    p.close()


def spiky_grid() -> F.GridData:
    grid = synthetic_grid(diverged={("no_qk_norm", 1, LR): 150},
                          spike_steps={("no_qk_norm", 0, LR): [60, 120], ("olmo0424", 2, LR): [90]})
    online = grid.spikes.assign(series="grad/norm@online", sigma=7.0)  # a second rule at the same steps
    grid.spikes = pd.concat([grid.spikes, online], ignore_index=True)
    return grid


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    grid = spiky_grid()
    out = tmp_path_factory.mktemp("site")
    write_dashboard(grid, out)
    return grid, (out / "index.html").as_uri()


def when(page, cond: str, timeout: float = 15) -> list[dict]:
    """The charts' info (`__dash.panels()`, as `p` in `cond`) once `cond` holds."""
    js = f"(() => {{ const p = __dash.panels(); return ({cond}) ? {{panels: p}} : null; }})()"
    return page.wait_for(js, timeout)["panels"]


LOADED = "p.every(i => i.heat ? i.loaded : i.points > 0)"  # charts exist once __dash.ready


def open_page(page, url: str) -> list[dict]:
    """Load (or, for a new #fragment only, route), wait until every chart of that view has its
    data; returns the charts' info."""
    page.goto(url)
    frag = urllib.parse.unquote("#" + url.split("#", 1)[1]) if "#" in url else ""
    page.wait_for(f"window.__dash && __dash.ready && decodeURIComponent(__dash.route) === {json.dumps(frag)}")
    return when(page, LOADED)


def panel(infos: list[dict], title: str) -> tuple[int, dict]:
    return next((i, p) for i, p in enumerate(infos) if p["title"] == title)


def ema(x: np.ndarray, y: np.ndarray, s: float, ref: float) -> np.ndarray:
    """The page's smoothing: a debiased EMA whose weight decays per `ref` steps, not per point."""
    out, acc, norm, last = np.empty_like(y), 0.0, 0.0, None
    for i, (xi, yi) in enumerate(zip(x, y)):
        w = 0.0 if last is None else s ** ((xi - last) / ref)
        acc, norm, last = w * acc + (1 - w) * yi, w * norm + (1 - w), xi
        out[i] = acc / norm
    return out


def step_values(grid: F.GridData, metric: str, step: int, runs: list[str]) -> list[float]:
    s = grid.series
    return s[(s["metric"] == metric) & (s["step"] == step) & s[F.RUN_ID].isin(runs)]["value"].tolist()


def test_static_page_works_offline_from_a_file(page, site):
    grid, url = site
    infos = open_page(page, url)
    assert [p["title"] for p in infos][:4] == ["train/loss", "eval/loss", "grad/norm", "logits/log_z_mean"]
    assert all(p["xmin"] == 0 and p["xmax"] == 199 for p in infos)  # one step range for every chart
    assert all(r.startswith(("file://", "data:")) for r in page.requests), page.requests
    assert page.eval("document.querySelectorAll('table.matrix a.cell').length") == len(grid.runs) == 9
    assert page.eval("document.querySelectorAll('table.cmp tbody tr').length") == 2  # arms vs baseline
    assert page.errors == [] and page.eval("__dash.errors") == []


def test_hover_reads_out_every_series_of_every_chart_at_the_step(page, site):
    grid, url = site
    infos = open_page(page, url)
    i, gnorm = panel(infos, "grad/norm")
    at = page.eval(f"__dash.point({i}, 60)")
    page.hover(at["x"], at["y"])
    infos = when(page, "p[0].readout[0].startsWith('step 60')")
    groups = page.eval("JSON.parse(document.getElementById('dash-data').textContent).overview.groups")
    for title, metric in (("grad/norm", M.GRAD_NORM), ("train/loss", M.TRAIN_LOSS)):
        readout = panel(infos, title)[1]["readout"]
        assert readout[0].startswith("step 60")  # the charts' cursors are synced
        for g, line in zip(groups, readout[1:]):
            label, value = line.split("=")
            assert label == g["label"]
            assert float(value) == pytest.approx(np.mean(step_values(grid, metric, 60, g["runs"])), rel=1e-3)
    assert "spike @ 60" in panel(infos, "grad/norm")[1]["readout"][0]  # the marker under the cursor


def test_metric_smoothing_and_log_axis_controls(page, site):
    _, url = site
    infos = open_page(page, url)
    n = len(infos)
    page.eval("(() => { const s = document.getElementById('add-metric'); s.value = 'param/norm/embed';"
              " s.dispatchEvent(new Event('change')); })()")
    infos = when(page, f"p.length === {n + 1} && {LOADED}")
    assert panel(infos, "param/norm/embed")[1]["traces"] == 3
    shared = page.eval("location.hash")  # the view is in the URL
    assert "m=train%2Floss" in shared and "param%2Fnorm%2Fembed" in shared
    before = panel(infos, "train/loss")[1]
    page.eval("(() => { const s = document.getElementById('smooth'); s.value = '0.9';"
              " s.dispatchEvent(new Event('change')); })()")
    infos = when(page, f"p[0].series === 12 && {LOADED}")
    after = panel(infos, "train/loss")[1]
    assert after["series"] == before["series"] + 3  # a faint raw line under each smoothed one
    x, raw = np.array(before["x"], float), np.array(before["values"][1], float)
    smooth = np.array(after["values"][1], float)
    assert np.allclose(smooth, ema(x, raw, 0.9, ref=1.0))  # 199 steps / 500 < 1: per-step decay 0.9
    assert np.abs(np.diff(smooth, 2)).sum() < 0.2 * np.abs(np.diff(raw, 2)).sum()
    assert not panel(infos, "train/loss")[1]["log"] and panel(infos, "grad/norm")[1]["log"]  # grad norm: log
    page.eval("document.querySelector('.chart[data-key^=\"train/loss|\"] input.log').click()")
    infos = when(page, f"p[0].log && {LOADED}")
    assert page.eval("document.querySelector('.chart').dataset.key") == "train/loss|groups|true|0.9"
    assert page.eval("document.querySelector('.chart .u-over') !== null")
    assert page.errors == []


def test_zoom_on_one_chart_moves_all_of_them(page, site):
    _, url = site
    infos = open_page(page, url)
    a, b = page.eval("__dash.point(0, 50)"), page.eval("__dash.point(0, 100)")
    page.drag(a["x"], a["y"], b["x"], b["y"])
    infos = when(page, "p.every(i => i.xmax < 150)")
    for p in infos:
        assert p["xmin"] == pytest.approx(50, abs=1) and p["xmax"] == pytest.approx(100, abs=1), p["title"]
    # refetched for the new range: the first chart now holds the points of 50..100 only
    infos = when(page, "p[0].x[0] >= 49")
    assert infos[0]["x"][0] >= 49 and infos[0]["x"][-1] <= 101
    # shift+drag pans every chart: 20 steps to the right is the range 20 steps to the left
    a, b = page.eval("__dash.point(1, 80)"), page.eval("__dash.point(1, 60)")
    page.drag(a["x"], a["y"], b["x"], b["y"], modifiers=8)  # 8: shift
    infos = when(page, "p.every(i => i.xmin > 60)")
    for p in infos:
        assert p["xmin"] == pytest.approx(70, abs=1) and p["xmax"] == pytest.approx(120, abs=1), p["title"]
    c = page.eval("__dash.point(2, 75)")
    page.click(c["x"], c["y"])  # a double click on another chart resets them all
    page.mouse("mousePressed", c["x"], c["y"], buttons=1, button="left", click_count=2)
    page.mouse("mouseReleased", c["x"], c["y"], button="left", click_count=2)
    infos = when(page, "p.every(i => i.xmax === 199)")
    assert all(p["xmin"] == 0 for p in infos)


def test_one_event_per_run_and_step_and_a_marker_opens_its_zoomed_view(page, site):
    grid, url = site
    assert len(grid.spikes) == 6
    open_page(page, url + "#/spikes")
    rows = page.eval("[...document.querySelectorAll('table.events tbody tr')].map(r => r.innerText)")
    assert len(rows) == 3 and "grad/norm@olmo2 12σ" in rows[0] and "grad/norm@online 7σ" in rows[0]
    assert page.eval("document.getElementById('spike-count').textContent").startswith("3 events")
    page.eval("(() => { const s = document.getElementById('f-arm'); s.value = 'olmo0424';"
              " s.dispatchEvent(new Event('change')); })()")
    assert page.eval("document.querySelectorAll('table.events tbody tr').length") == 1
    # a marker on the run page's grad norm chart opens the spike view
    infos = open_page(page, url + "#/run/r100_no_qk_norm")
    assert all(p["xmin"] == 0 and p["xmax"] == 199 for p in infos if not p.get("heat"))
    i, _ = panel(infos, "global grad norm")
    at = page.eval(f"__dash.point({i}, 120, 0.5)")
    page.click(at["x"], at["y"])
    page.wait_for("__dash.route === '#/spike/r100_no_qk_norm/120'")  # routed: the spike view's charts
    infos = when(page, LOADED)
    per_layer = panel(infos, "grad norm per layer")[1]
    assert per_layer["traces"] == 4 and per_layer["xmin"] == 100 and per_layer["xmax"] == 140
    assert per_layer["raw"] and per_layer["x"] == list(range(100, 141))
    assert any(p.get("heat") for p in infos)
    caption = page.eval("document.getElementById('spike-caption').textContent")
    assert "step 120" in caption and "lead layer 1" in caption and "attention logits rising: yes" in caption


def test_a_loss_spike_lists_its_precursors_in_the_events_and_its_view(page, tmp_path):
    grid = synthetic_grid(arms=("olmo2",), seeds=(0,), steps=200, loss_spike_steps={("olmo2", 0, LR): [120]})
    url = write_dashboard(grid, tmp_path).as_uri()
    open_page(page, url + "#/spikes")
    rows = page.eval("[...document.querySelectorAll('table.events tbody tr')].map(r => r.innerText)")
    text = "update/rms layer 0, 10 steps before; grad/norm layer 1, 5 steps before"  # factories.PRECURSORS
    assert len(rows) == 1 and text in rows[0]
    summary = page.eval("[...document.querySelectorAll('#leadlag table.leadlag tbody tr')]"
                        ".map(r => r.innerText)")
    assert any(r.startswith("olmo2\tAdam update RMS\t1\t100%\t100%\t0%\t10") for r in summary), summary
    section = page.eval("document.getElementById('leadlag').innerText")
    assert "Adam update RMS led in 100% of 1 loss spike" in section
    open_page(page, url + "#/spike/r000_olmo2/120")
    caption = page.eval("document.getElementById('spike-caption').textContent")
    assert caption.endswith(f"before it: {text}")
    assert page.errors == [] and page.eval("__dash.errors") == []


def test_a_spike_training_rewound_from_has_its_badge_in_the_events_table(page, tmp_path):
    grid = synthetic_grid(arms=("olmo2",), seeds=(0,), steps=200, loss_spike_steps={("olmo2", 0, LR): [120]})
    grid.spikes["action"] = "rewind"
    url = write_dashboard(grid, tmp_path).as_uri()
    open_page(page, url + "#/spikes")
    rows = page.eval("[...document.querySelectorAll('table.events tbody tr')].map(r => r.innerText)")
    assert len(rows) == 1 and rows[0].split("\t")[4].startswith("rewound")
    assert page.errors == [] and page.eval("__dash.errors") == []


def hostile_grid() -> F.GridData:
    grid = synthetic_grid(arms=(PWN, "b"), seeds=(0,), steps=60, spike_steps={(PWN, 0, LR): [30]},
                          name=HOSTILE, baseline=PWN)
    runs = grid.runs.copy()
    runs.loc[0, F.RUN_NAME] = HOSTILE
    runs.loc[1, F.RUN_NAME] = PWN
    grid.runs = runs
    grid.params[PWN] = HOSTILE
    return grid


def test_hostile_names_execute_nothing_static_or_served(page, tmp_path):
    grid = hostile_grid()
    write_dashboard(grid, tmp_path)
    dialogs: list[dict] = []
    page.browser.listen(page.session, lambda m: dialogs.append(m) if m.get("method") ==
                        "Page.javascriptDialogOpening" else None)
    with DashboardServer(lambda: grid, poll_s=60) as server:
        rid = grid.runs[F.RUN_ID][0]
        for base in ((tmp_path / "index.html").as_uri(), server.url):
            run = urllib.parse.quote(rid, safe="")
            for route in ("", "#/spikes", f"#/run/{run}", f"#/spike/{run}/30"):
                open_page(page, base + route)
                text = page.eval("document.body.innerText")
                assert HOSTILE in text or PWN in text, route
                assert page.eval("window.__pwned") is None
                assert page.eval("document.querySelectorAll('#app img, #app svg, #app script').length") == 0
    assert dialogs == [] and page.errors == []
    assert HOSTILE in page.eval("document.title")  # the title is text too


def test_a_run_started_while_serving_appears_without_a_reload(page, tmp_path, mlflow_template):
    store = Store(tmp_path / "store", mlflow_template)
    store.add_run("first", steps=40)
    uri, exp = store.uri, store.experiment
    with DashboardServer(lambda: load_grid(exp, uri), poll_s=0.5, probe=mlflow_probe(uri, exp)) as server:
        open_page(page, server.url)
        page.eval("window.__same_page = 1")
        assert page.eval("document.querySelectorAll('table.runs tbody tr').length") == 1
        rid = store.add_run("second", seed=1, steps=20, status=None)  # running
        page.wait_for("document.querySelectorAll('table.runs tbody tr').length === 2", timeout=10)
        assert page.eval("window.__same_page") == 1  # no reload
        assert "running @ 19" in page.eval("document.querySelector('table.runs').innerText")
        when(page, "p[0].traces === 2", timeout=10)
        store.log_points(rid, 20, 60, seed=1)  # the running run logs more steps: every chart follows
        when(page, "p.every(i => i.xmax === 59) && p[0].x.includes(59)", timeout=10)
        # its run page, live: the charts get the new points in place
        open_page(page, f"{server.url}#/run/{rid}")
        when(page, "p[0].xmax === 59")
        page.eval("window.__chart = document.querySelector('.chart')")
        store.log_points(rid, 60, 80, seed=1)
        when(page, "p[0].xmax === 79 && p[0].x.includes(79)", timeout=10)
        assert page.eval("document.querySelector('.chart') === window.__chart")  # not rebuilt
        assert "running @ 79" in page.eval("document.querySelector('.run-meta').textContent")
        store.client.set_tag(rid, "status", "finished")
        store.client.set_terminated(rid, "FINISHED")
        page.wait_for("document.querySelector('.run-meta').textContent.includes('finished')", timeout=10)
        assert page.eval("document.getElementById('live').textContent").startswith("watching")
        assert page.eval("window.__same_page") == 1 and page.errors == []


def test_finished_runs_are_not_refetched_while_the_overview_polls(page, site):
    grid, _ = site
    looks = {"n": 0}

    def probe() -> int:  # the store "changes" at every look: a new version each poll
        looks["n"] += 1
        return looks["n"]

    with DashboardServer(lambda: grid, poll_s=0.2, probe=probe) as server:
        open_page(page, server.url)
        charts = len([r for r in page.requests if "/api/chart" in r])
        assert charts == len(page.eval("__dash.panels()"))
        page.wait_for(f"__dash.version >= {page.eval('__dash.version') + 3}", timeout=10)
        polls = [r for r in page.requests if "/api/overview" in r]
        assert len(polls) >= 4 and len([r for r in page.requests if "/api/chart" in r]) == charts


def test_static_and_served_pages_show_the_same_numbers(page, site, tmp_path):
    grid, url = site
    static = open_page(page, url + "#/run/r100_no_qk_norm")
    with DashboardServer(lambda: grid, poll_s=60) as server:
        served = open_page(page, server.url + "#/run/r100_no_qk_norm")
    for a, b in zip(static, served):
        if a.get("heat"):
            continue
        assert a["title"] == b["title"] and a["x"] == b["x"]
        np.testing.assert_allclose(np.array(a["values"], float), np.array(b["values"], float), rtol=1e-4)


def test_overview_per_lr_shows_each_arm_once_and_a_plain_experiment_lists_runs(page, tmp_path):
    grid = synthetic_grid(arms=("a", "b"), seeds=(0, 1), lrs=(1e-3, 1e-2), steps=30)
    keep = ~((grid.runs[F.ARM] == "b") & (grid.runs[F.LR] == 1e-2))
    grid.runs = grid.runs[keep].reset_index(drop=True)
    write_dashboard(grid, tmp_path / "lr")
    open_page(page, (tmp_path / "lr" / "index.html").as_uri())
    headings = page.eval("[...document.querySelectorAll('.matrix-wrap h2')].map(h => h.textContent)")
    rows = page.eval("[...document.querySelectorAll('table.matrix')].map(t => t.tBodies[0].rows.length)")
    assert headings == ["lr = 0.001", "lr = 0.01"] and rows == [2, 1]
    plain = synthetic_grid(arms=("run-x", "run-y"), seeds=(0,), steps=30, baseline=None)
    plain.parent_run_id = None
    write_dashboard(plain, tmp_path / "plain")
    infos = open_page(page, (tmp_path / "plain" / "index.html").as_uri())
    assert page.eval("document.querySelectorAll('table.matrix').length") == 0
    assert page.eval("document.querySelectorAll('table.runs tbody tr').length") == 2
    assert page.eval("document.getElementById('mode').value") == "runs" and infos[0]["traces"] == 2
