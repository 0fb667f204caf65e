"""The HTML spike dashboard: pages, links, SVG geometry, escaping, speed, live server, real browser."""

from __future__ import annotations

import _thread
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports import frames as F
from reports import svg
from reports.dashboard import STATUS_BG, atomic_write, run_page_names, write_dashboard
from reports.serve import DashboardServer, serve_dashboard
from stability import metric_names as M
from tests.reports import chromium
from tests.reports.factories import synthetic_grid

LR = 3e-3
SPIKY, DIVERGED = ("no_qk_norm", 0, LR), ("no_qk_norm", 1, LR)


class Doc(HTMLParser):
    """Start tags (name, attrs) and the text a browser would show."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def attrs(self, tag: str, **match: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in match.items())]


def grid_with_statuses() -> F.GridData:
    grid = synthetic_grid(diverged={DIVERGED: 150}, spike_steps={SPIKY: [60, 120], ("olmo0424", 2, LR): [90]})
    runs = grid.runs.copy()
    runs.loc[runs[F.RUN_ID] == "r200_olmo0424", F.STATUS] = "failed"
    runs.loc[runs[F.RUN_ID] == "r210_olmo0424", F.STATUS] = "running"
    grid.runs = runs
    return grid


@pytest.fixture(scope="module")
def dash(tmp_path_factory) -> tuple[F.GridData, Path]:
    grid = grid_with_statuses()
    out = tmp_path_factory.mktemp("dash")
    assert write_dashboard(grid, out) == out / "index.html"
    return grid, out


def charts(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, re.S)


def svg_geometry(chart: str) -> tuple[float, float, float, float]:
    """(x0, x1, plot left, plot width) from the chart's data attributes."""
    x0, x1 = map(float, re.search(r'data-x-domain="([^"]+)"', chart).group(1).split())
    left, _, width, _ = map(float, re.search(r'data-plot="([^"]+)"', chart).group(1).split())
    return x0, x1, left, width


def path_points(chart: str, label: str) -> np.ndarray:
    d = re.search(rf'data-label="{re.escape(label)}" d="([^"]*)"', chart).group(1)
    return np.array([[float(v) for v in p.split()] for p in re.split(r"[ML]", d) if p.strip()])


def test_overview_matrix_cells_status_and_links(dash):
    grid, out = dash
    page = (out / "index.html").read_text()
    doc = Doc(page)
    cells = [a for t, a in doc.tags if t == "a" and (a.get("class") or "").startswith("cell ")]
    assert len(cells) == len(grid.runs) == 9
    for a in cells:
        assert (out / a["href"]).is_file()
    assert len(doc.attrs("table", **{"class": "matrix"})) == 1
    assert [a["href"] for a in cells].count("runs/r110_no_qk_norm.html") == 1
    text = " ".join(" ".join(doc.text).split())
    assert "diverged @ 150" in text and "running @ 199" in text
    assert "running 1 · finished 6 · diverged 1 · failed 1" in text
    assert "synthetic" in text and "baseline arm: olmo2" in text and "generated 20" in text
    by_status = {a["class"].split()[1]: a["style"] for a in cells}
    assert STATUS_BG["diverged"] in by_status["st-diverged"] and STATUS_BG["failed"] in by_status["st-failed"]
    # the spikiest finished run gets the darkest end of the sequential scale, a spike-free one white-ish
    spiky = next(a for a in cells if a["href"] == "runs/r100_no_qk_norm.html")
    calm = next(a for a in cells if a["href"] == "runs/r000_olmo2.html")
    assert "#3f007d" in spiky["style"] and "#fcfbfd" in calm["style"]
    # rows follow grid.arms (baseline first), columns the seeds
    assert re.findall(r"<tr><th>([^<]+)", page)[1:] == ["olmo2 ", "no_qk_norm", "olmo0424"]


def test_run_page_charts_spike_markers_and_tables(dash):
    grid, out = dash
    page = (out / "runs" / "r100_no_qk_norm.html").read_text()
    found = charts(page)
    assert [re.search(r'aria-label="([^"]+)"', c).group(1) for c in found] == [
        "loss", "global grad norm (log)", "max attention logit per layer", "log Z"]
    gnorm = found[1]
    x0, x1, left, width = svg_geometry(gnorm)
    assert (x0, x1) == (0, 199)
    pts = path_points(gnorm, "grad/norm")
    for step in (60, 120):
        marker = re.search(rf'<g class="marker spike" data-x="{step}">.*?x1="([\d.]+)"', gnorm).group(1)
        expected = left + (step - x0) / (x1 - x0) * width
        assert float(marker) == pytest.approx(expected, abs=0.06)
        # the curve has a vertex there, and it is a peak (smallest y pixel = largest value)
        at = pts[np.isclose(pts[:, 0], expected, atol=0.06)]
        assert at.shape[0] == 1 and at[0, 1] < np.median(pts[:, 1]) - 50
    assert len(found[2].split('class="series"')) - 1 == 4  # one line per layer
    assert 'data-label="eval/loss"' in found[0]
    doc = Doc(page)
    gallery = (out / "spikes.html").read_text()
    links = [a["href"] for t, a in doc.tags if t == "a" and a.get("href", "").startswith("../spikes.html#")]
    assert len(links) == 2
    for href in links:
        assert f'id="{href.split("#")[1]}"' in gallery
    text = " ".join(doc.text)
    assert "grad/norm@olmo2" in text and "model.qk_norm" in text and "none" in text
    # the diverged run: marker at the divergence step, and the summary says so
    div_page = (out / "runs" / "r110_no_qk_norm.html").read_text()
    assert '<g class="marker diverged" data-x="150">' in div_page and "diverged @ 150" in div_page


def test_spike_gallery_windows_and_captions(dash):
    grid, out = dash
    page = (out / "spikes.html").read_text()
    figures = re.findall(r'<figure class="spike".*?</figure>', page, re.S)
    assert len(figures) == len(grid.spikes) == 3
    for fig, step in zip(figures, (60, 120, 90)):
        found = charts(fig)
        assert len(found) == 3
        assert all(svg_geometry(c)[:2] == (step - 20, step + 20) for c in found)
        assert f"step {step}" in fig and "leading layer 1" in fig
        per_layer = found[2]
        assert 'data-label="layer 1 (lead)"' in per_layer and per_layer.count('class="series"') == 4
        lead = path_points(per_layer, "layer 1 (lead)")
        assert lead.shape[0] == 41  # step +- 20, every step
        assert (Path(out) / re.search(r'href="(runs/[^"]+)"', fig).group(1)).is_file()
    assert "arm olmo0424 · seed 2 · step 90" in page


def test_user_strings_are_escaped_everywhere(tmp_path):
    grid = synthetic_grid(arms=('"><img src=x onerror=alert(1)>', "b"), seeds=(0,), steps=60,
                          spike_steps={('"><img src=x onerror=alert(1)>', 0, LR): [30]},
                          name="<b>grid</b> & co", baseline='"><img src=x onerror=alert(1)>')
    runs = grid.runs.copy()
    runs.loc[0, F.RUN_NAME] = "<script>alert(1)</script>"
    grid.runs = runs
    grid.params["<i>param</i>"] = '"quoted" & <tag>'
    grid.spikes["series"] = "<svg onload=alert(1)>"
    write_dashboard(grid, tmp_path)
    pages = [tmp_path / "index.html", tmp_path / "spikes.html", *sorted((tmp_path / "runs").glob("*.html"))]
    assert len(pages) == 4
    for path in pages:
        raw = path.read_text()
        for bad in ("<script", "<img", "<svg onload", "<i>param", "<b>grid", "<tag>"):
            assert bad not in raw, (path.name, bad)
        doc = Doc(raw)
        assert not {t for t, _ in doc.tags} & {"script", "img", "iframe", "object"}
        assert not any(k.startswith("on") for _, a in doc.tags for k in a)
        text = "".join(doc.text)
        assert "<b>grid</b> & co" in text  # rendered as text
    rid = runs.loc[0, F.RUN_ID]
    run_page = (tmp_path / "runs" / run_page_names([rid])[rid]).read_text()
    text = "".join(Doc(run_page).text)
    assert "<script>alert(1)</script>" in text and "<i>param</i>" in text and '"quoted" & <tag>' in text
    assert "<svg onload=alert(1)>" in text
    assert '"><img src=x onerror=alert(1)>' in "".join(Doc((tmp_path / "index.html").read_text()).text)


def test_run_page_names_cannot_escape_out_dir(tmp_path):
    ids = ["../../x", "a/b", "a_b", "", ".hidden", "..", "A", "a", "ok-1.2_x", "x" * 300, "C:\\evil"]
    names = run_page_names(ids)
    assert len(set(n.lower() for n in names.values())) == len(ids)
    for name in names.values():
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.html", name) and len(name) < 110
    assert names["ok-1.2_x"] == "ok-1.2_x.html" and names["a_b"] == "a_b.html"
    grid = synthetic_grid(arms=("a",), seeds=(0, 1), steps=30)
    runs = grid.runs.copy()
    runs[F.RUN_ID] = ["../../x", "../../../etc/evil"]
    grid.runs = runs
    out = tmp_path / "deep" / "out"
    write_dashboard(grid, out)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert all(p.startswith("deep/out/") for p in written) and len(written) == 4
    hrefs = [a["href"] for t, a in Doc((out / "index.html").read_text()).tags if t == "a" and "cell" in
             (a.get("class") or "")]
    assert len(hrefs) == 2 and all((out / h).resolve().parent == (out / "runs").resolve() for h in hrefs)


def test_empty_grid_and_orphan_spikes(tmp_path):
    row = {F.RUN_ID: "gone", "step": 5, "series": "train/loss@olmo2", "value": 1.0, "sigma": 9.0, "mean": 0.0,
           "std": 1.0, "leading_layer": pd.NA, "leading_sigma": np.nan, "attn_logit_rising": pd.NA,
           "log_z_rising": pd.NA}
    orphan = pd.DataFrame([row], columns=list(F.SPIKE_COLUMNS))
    write_dashboard(F.GridData("empty", F.empty_runs(), spikes=orphan), tmp_path)
    assert "runs 0" in (tmp_path / "index.html").read_text()
    gallery = (tmp_path / "spikes.html").read_text()
    assert gallery.count('<figure class="spike"') == 1 and "no data" in gallery
    assert 'href="runs/' not in gallery
    assert list((tmp_path / "runs").iterdir()) == []


def test_downsample_keeps_extremes_spikes_and_gaps():
    x = np.arange(5000.0)
    y = np.sin(x / 300.0)
    y[1234] = 9.0
    y[3000:3005] = np.nan
    y[4321] = -7.0
    xs, ys = svg.downsample(x, y, 600, keep_x=[777.0, 1234.0])
    assert xs.size <= 606 and np.all(np.diff(xs) > 0)
    assert {0.0, 777.0, 1234.0, 4321.0, 4999.0} <= set(xs.tolist())
    assert np.isnan(ys[xs == 3000.0]).all() and (xs == 3000.0).any()
    assert np.nanmax(ys) == 9.0 and np.nanmin(ys) == -7.0
    small = svg.downsample(x[:100], y[:100], 600)
    assert small[0].size == 100


def test_line_chart_geometry_log_axis_and_markers():
    x = np.arange(101.0)
    chart = svg.line_chart([svg.Series("a", x, 10 ** (x / 50)), svg.Series("b <&>", x, np.full(101, 2.0))],
                           title="t", width=400, height=200, log_y=True,
                           markers=[svg.Marker(25, "spike <1>"), svg.Marker(80, "div", "diverged"),
                                    svg.Marker(500, "outside")])
    x0, x1, left, width = svg_geometry(chart)
    assert (x0, x1) == (0, 100)
    pattern = r'class="marker spike" data-x="25"><title>spike &lt;1&gt;</title><line x1="([\d.]+)"'
    spike = float(re.search(pattern, chart).group(1))
    assert spike == pytest.approx(left + 0.25 * width, abs=0.06)
    assert 'class="marker diverged" data-x="80"' in chart and 'data-x="500"' not in chart
    assert "b &lt;&amp;&gt;" in chart and ">10<" in chart and ">100<" in chart  # legend, log ticks
    pts = path_points(chart, "a")
    fit = np.polyval(np.polyfit(pts[:, 0], pts[:, 1], 1), pts[:, 0])
    assert np.abs(fit - pts[:, 1]).max() < 0.1  # an exponential is a straight line on a log axis
    empty = svg.line_chart([svg.Series("none", np.array([]), np.array([]))], title="empty")
    assert "no data" in empty
    assert svg.nice_ticks(0, 199, 5) == [0, 50, 100, 150] and svg.fmt_tick(20000) == "20k"


def test_atomic_write_never_leaves_partial_files(tmp_path, monkeypatch):
    target = tmp_path / "index.html"
    atomic_write(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("reports.dashboard.os.replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, "new" * 1000)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_pages_are_self_contained_and_live_only_with_refresh(dash, tmp_path):
    grid, out = dash
    pages = [out / "index.html", out / "spikes.html", *sorted((out / "runs").glob("*.html"))]
    assert len(pages) == 11
    for path in pages:
        raw = path.read_text()
        doc = Doc(raw)
        refs = [a.get(k) or "" for _, a in doc.tags for k in ("src", "href") if k in a]
        assert not [r for r in refs if re.match(r"(https?:)?//", r)]
        assert "<script" not in raw and 'http-equiv="refresh"' not in raw and "@import" not in raw
    write_dashboard(grid, tmp_path, refresh_s=7)
    for path in [tmp_path / "index.html", tmp_path / "spikes.html", *(tmp_path / "runs").glob("*.html")]:
        assert '<meta http-equiv="refresh" content="7">' in path.read_text()


def _labels(labels: list, codes: np.ndarray) -> pd.Series:
    """`labels[codes]` as an object column (building pandas' default str dtype takes seconds)."""
    return pd.Series(np.array(labels, dtype=object)[codes], dtype=object)


def _fast_big_grid(n_runs: int = 64, steps: int = 5000, n_layers: int = 4) -> F.GridData:
    """64 runs x 5000 steps built with numpy (the factory is too slow for this size)."""
    rng = np.random.default_rng(0)
    rids = [f"run{i:02d}" for i in range(n_runs)]
    metrics = [M.TRAIN_LOSS, M.GRAD_NORM, M.LOGITS_LOG_Z_MEAN, M.EVAL_LOSS, M.TRAIN_LR,
               *[M.layer_key(M.ATTN_LOGIT_MAX, i) for i in range(n_layers)]]
    # series: run-major, then metric, then step
    run_i, metric_i, step = (a.ravel() for a in np.indices((n_runs, len(metrics), steps)))
    series = pd.DataFrame({F.RUN_ID: _labels(rids, run_i), "step": step, "metric": _labels(metrics, metric_i),
                           "value": 3 + rng.random(step.size)})
    keys = [(M.GRAD_NORM, -1), (M.UPDATE_RMS, -1), (M.ACT_RMS, -1),
            (M.ATTN_LOGIT_MAX, 0), (M.ATTN_LOGIT_MAX, 1)]
    run_i, key_i, layer, step = (a.ravel() for a in np.indices((n_runs, len(keys), n_layers, steps)))
    names = list(dict.fromkeys(k for k, _ in keys))
    dense = pd.DataFrame({F.RUN_ID: _labels(rids, run_i), "step": step,
                          "key": _labels(names, np.array([names.index(k) for k, _ in keys])[key_i]),
                          "layer": layer,
                          "head": np.array([h for _, h in keys])[key_i], "value": rng.random(step.size)})
    spikes = pd.DataFrame([{F.RUN_ID: r, "step": st, "series": "grad/norm@olmo2", "value": 9.0, "sigma": 8.0,
                            "mean": 1.0, "std": 1.0, "leading_layer": 2, "leading_sigma": 9.0,
                            "attn_logit_rising": False, "log_z_rising": True}
                           for r in rids[::4] for st in (1111, 3333)], columns=list(F.SPIKE_COLUMNS))
    runs = F.typed_runs(pd.DataFrame({
        F.RUN_ID: rids, F.RUN_NAME: rids, F.ARM: [f"arm{i % 8}" for i in range(n_runs)],
        F.SEED: [i // 8 for i in range(n_runs)], F.LR: LR, F.STATUS: "finished", F.LAST_STEP: steps - 1,
        F.SPIKE_SCORE_GRAD_NORM: rng.random(n_runs)}))
    return F.GridData("big", runs, series, dense, spikes, pd.DataFrame({"a": range(n_runs)}, index=rids))


def test_large_grid_writes_in_seconds_with_bounded_svg(tmp_path):
    grid = _fast_big_grid()
    start = time.process_time()  # CPU time: robust to a busy test machine
    write_dashboard(grid, tmp_path)
    elapsed = time.process_time() - start
    assert elapsed < 10.0, f"64 x 5000 dashboard took {elapsed:.1f} s of CPU"
    page = (tmp_path / "runs" / "run00.html").read_text()
    for chart in charts(page):
        for d in re.findall(r'class="series" data-label="[^"]*" d="([^"]*)"', chart):
            assert 100 < d.count("L") + d.count("M") <= 605
        x0, x1, left, width = svg_geometry(chart)
        assert (x0, x1) == (0, 4999)
    assert len(re.findall(r'<figure class="spike"', (tmp_path / "spikes.html").read_text())) == 32
    assert len(list((tmp_path / "runs").glob("*.html"))) == 64


def _status_flipping_build(running_builds: int):
    grid = synthetic_grid(arms=("olmo2", "no_qk_norm"), seeds=(0,), steps=40)
    calls = []

    def build() -> F.GridData:
        calls.append(time.monotonic())
        g = F.GridData(grid.name, grid.runs.copy(), grid.series, grid.dense, grid.spikes, grid.params,
                       grid.baseline)
        if len(calls) <= running_builds:
            g.runs.loc[1, F.STATUS] = "running"
        return g

    return build, calls


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def test_serve_rebuilds_while_running_then_stops(tmp_path):
    build, calls = _status_flipping_build(running_builds=3)
    urls: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=serve_dashboard, args=(build, tmp_path),
                              kwargs={"refresh_s": 0.2, "stop": stop, "on_url": urls.append})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not urls and time.monotonic() < deadline:
            time.sleep(0.02)
        url = urls[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/index\.html", url)
        first = _get(url)
        assert "running @ 39" in first and 'http-equiv="refresh" content="0.2"' in first
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        final = _get(url)
        assert "running @" not in final and "finished 2" in final and "http-equiv" not in final
        n = len(calls)
        time.sleep(0.6)
        assert len(calls) == n == 4  # nothing running: no more rebuilds
        base = url.rsplit("/", 1)[0]
        assert "spike gallery" in _get(f"{base}/spikes.html")
        assert "synthetic/no_qk_norm/s0" in _get(f"{base}/runs/r100_no_qk_norm.html")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


@pytest.fixture
def ctrl_c_handler():
    """Python's own Ctrl-C handler for the test: a background job (`cmd &` in a script, CI)
    starts with SIGINT ignored, and then interrupt_main does nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_serve_stops_cleanly_on_ctrl_c(tmp_path, ctrl_c_handler):
    build, calls = _status_flipping_build(running_builds=10**6)
    urls: list[str] = []

    def ready(url: str) -> None:
        urls.append(url)
        assert "running @" in _get(url)
        threading.Timer(0.2, _thread.interrupt_main).start()  # what Ctrl-C does

    url = serve_dashboard(build, tmp_path, refresh_s=0.1, on_url=ready)
    assert url == urls[0]
    n = len(calls)
    time.sleep(0.3)
    assert len(calls) == n  # the rebuild thread is gone
    assert not [t for t in threading.enumerate() if t.name.startswith("dashboard-")]
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_dashboard_server_survives_a_failing_build(tmp_path, capsys):
    build, calls = _status_flipping_build(running_builds=10**6)
    failing = {"n": 0}

    def flaky() -> F.GridData:
        failing["n"] += 1
        if failing["n"] == 2:
            raise RuntimeError("store busy")
        return build()

    with DashboardServer(flaky, tmp_path, refresh_s=0.05) as server:
        while server.builds < 3:
            time.sleep(0.02)
        assert "running @" in _get(server.url)
    assert "store busy" in capsys.readouterr().err


def test_headless_chromium_renders_pages(dash, tmp_path):
    browser, why = chromium.ensure_chromium()
    if browser is None:
        pytest.skip(f"headless Chromium not available: {why}")
    plt_image = pytest.importorskip("matplotlib.image")
    _, out = dash
    # the console check is live: a page with a JS error must be caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    pages = {"index.html": 0, "runs/r100_no_qk_norm.html": 4, "spikes.html": 9}
    urls = [bad.as_uri(), *[(out / p).as_uri() for p in pages]]
    shots = [tmp_path / f"shot{i}.png" for i in range(len(urls))]
    with ThreadPoolExecutor(len(urls)) as pool:  # one browser per page, side by side
        bad_res, *results = pool.map(lambda a: chromium.render(browser, *a), zip(urls, shots))
    assert any("Uncaught ReferenceError" in ln for ln in bad_res.console), bad_res.stderr[-2000:]
    for (page, n_svg), res, shot in zip(pages.items(), results, shots[1:]):
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.console == [], res.console
        assert res.dom.count("<svg") == n_svg and "</html>" in res.dom
        assert shot.is_file() and shot.stat().st_size > 5000
        img = plt_image.imread(shot)
        assert img.shape[:2] == (1000, 1400)
        rgb = (img[..., :3] * 255).astype(np.uint32)
        colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
        assert len(colours) > 50, f"{page}: screenshot looks blank ({len(colours)} colours)"
        non_bg = (np.abs(img[..., :3] - img[0, -1, :3]).sum(axis=-1) > 0.1).mean()
        assert non_bg > 0.02, page


def test_an_isolated_point_is_drawn_as_a_dot():
    """A path draws nothing for a lone point (one eval, one attention probe): it gets a circle."""
    import numpy as np

    from reports.svg import Series, line_chart

    svg = line_chart([Series("eval/loss", np.array([0.0, 5.0, 9.0]), np.array([np.nan, 4.5, np.nan])),
                      Series("train/loss", np.arange(10.0), np.linspace(7, 4, 10))])
    assert svg.count('<circle class="point"') == 1
