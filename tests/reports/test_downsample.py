"""Per-pixel downsampling (reports/downsample.py) against plain loops over the points."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reports.downsample import Trace, chart_json, columns, minmax_points, num_list, slots_for, step_list


def run(x, y) -> Trace:
    return Trace(((np.asarray(x, float), np.asarray(y, float)),))


def group(*parts) -> Trace:
    return Trace(tuple((np.asarray(x, float), np.asarray(y, float)) for x, y in parts), group=True)


def test_raw_mode_aligns_traces_on_the_union_of_their_steps():
    a = run([0, 1, 2, 3], [1.0, 2.0, np.nan, 4.0])
    b = run([1, 3, 5], [10.0, 30.0, 50.0])
    cols = columns([a, b], 0, 5, 64)
    assert cols.raw and cols.bucket == 1
    assert cols.x.tolist() == [0, 1, 2, 3, 5]
    np.testing.assert_array_equal(cols.ys[0]["y"], [1, 2, np.nan, 4, np.nan])
    np.testing.assert_array_equal(cols.ys[1]["y"], [np.nan, 10, np.nan, 30, 50])
    # the range cuts points off on both sides
    assert columns([a, b], 1, 3, 64).x.tolist() == [1, 2, 3]


def test_raw_group_band_is_mean_min_max_over_runs_per_step():
    rng = np.random.default_rng(0)
    x = np.arange(50.0)
    runs = [(x, rng.normal(size=50)) for _ in range(4)]
    runs[2] = (x[::2], runs[2][1][::2])  # a run logging every other step
    cols = columns([group(*runs)], 0, 49, 200)
    assert cols.raw
    band = cols.ys[0]
    for j, step in enumerate(cols.x):
        vals = [y[np.flatnonzero(xx == step)[0]] for xx, y in runs if step in xx]
        assert band["y"][j] == pytest.approx(np.mean(vals))
        assert band["lo"][j] == min(vals) and band["hi"][j] == max(vals)


def test_bucket_minmax_keeps_every_spike_in_time_order():
    n = 100_000
    x = np.arange(n, dtype=float)
    y = np.sin(x / 5000.0)
    y[31_337] = 50.0  # a one-step spike
    y[31_400] = -40.0  # and a dip right after it, in the same bucket
    y[77_777] = np.inf  # a non-finite point is a gap, not a value
    cols = columns([run(x, y)], 0, n - 1, 600)
    assert not cols.raw and cols.x.size == 600
    assert cols.bucket == pytest.approx(2 * (n - 1) / 600)
    out = cols.ys[0]["y"]
    assert np.nanmax(out) == 50.0 and np.nanmin(out) == -40.0
    k = int(np.flatnonzero(out == 50.0)[0])
    assert out[k + 1] == -40.0 and k % 2 == 0  # the spike came first: first slot of its bucket
    # every bucket against a plain loop
    half = (n - 1) / 600
    for b in range(0, 300, 7):
        inb = (np.clip(((x - 0) / half).astype(int), 0, 599) // 2) == b
        vals = y[inb & np.isfinite(y)]
        first, second = out[2 * b], out[2 * b + 1]
        assert {first, second} == {vals.min(), vals.max()}
        assert (np.argmin(vals) <= np.argmax(vals)) == (first == vals.min())


def test_bucket_group_band_against_a_loop():
    rng = np.random.default_rng(1)
    x = np.arange(0, 20_000, 1.0)
    parts = [(x, rng.normal(i, 1.0, x.size)) for i in range(3)]
    cols = columns([group(*parts)], 1000, 9000, 100)
    band = cols.ys[0]
    half = 8000 / 100
    for s in (0, 1, 50, 99):
        lo_edge = 1000 + s * half
        means = []
        for px, py in parts:
            sel = (px >= 1000) & (px <= 9000) & (np.clip(((px - 1000) / half).astype(int), 0, 99) == s)
            means.append(py[sel].mean())
        assert band["y"][s] == pytest.approx(np.mean(means))
        assert band["lo"][s] == pytest.approx(min(means)) and band["hi"][s] == pytest.approx(max(means))
        assert cols.x[s] == pytest.approx(lo_edge + half / 2)


def test_slots_budget_and_chart_json_size_for_64_runs_of_100k_points():
    x = np.arange(100_000, dtype=float)
    rng = np.random.default_rng(2)
    runs = [run(x, 3 + rng.random(x.size)) for _ in range(64)]
    assert slots_for(runs, 900) == 374  # 24000 values / 64 traces, even
    assert slots_for(runs[:4], 900) == 900
    groups = [group(*[(x, 3 + rng.random(x.size)) for _ in range(8)]) for _ in range(8)]
    for traces in (runs, groups):
        text = chart_json(traces, 0, 99_999, 900)
        assert len(text.encode()) < 200_000
        data = json.loads(text)
        assert len(data["traces"]) == len(traces) and not data["raw"]
        assert all(len(t["y"]) == len(data["x"]) for t in data["traces"])
    zoomed = json.loads(chart_json(runs[:2], 500, 700, 900))
    assert zoomed["raw"] and zoomed["x"] == list(range(500, 701))  # full resolution when zoomed in


def test_json_numbers_nulls_and_steps():
    assert num_list(np.array([1.0, np.nan, np.inf, -np.inf, 123456.0, 1e-9])) == \
        "[1,null,null,null,1.2346e+05,1e-09]"
    assert step_list(np.array([0.0, 10.0])) == "[0,10]" and step_list(np.array([0.25, 2.0])) == "[0.2,2.0]"
    empty = json.loads(chart_json([run([], [])], 0, 10, 300))
    assert empty["x"] == [] and empty["traces"] == [{"y": []}]


def test_minmax_points_keep_extremes_endpoints_and_non_finite_points():
    x = np.arange(10_000, dtype=float)
    y = np.cos(x / 300.0)
    y[4242] = 9.0
    y[5000] = np.nan
    xs, ys = minmax_points(x, y, 100)
    assert xs.size <= 203 and np.all(np.diff(xs) > 0)
    assert {0.0, 4242.0, 5000.0, 9999.0} <= set(xs.tolist())
    assert np.isnan(ys[xs == 5000.0]).all()
    # re-bucketing the thinned series gives the same min and max per bucket as the full one
    full = columns([run(x, y)], 0, 9999, 100).ys[0]["y"]
    thin = columns([run(xs, ys)], 0, 9999, 100).ys[0]["y"]
    assert np.nanmax(thin) == np.nanmax(full) == 9.0 and np.nanmin(thin) == np.nanmin(full)
    short = minmax_points(x[:50], y[:50], 100)
    assert short[0].size == 50
