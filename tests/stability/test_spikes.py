"""Spike rules: hand-checked flags, online == offline exactly, resume, attribution, spikes.csv."""

from __future__ import annotations

import dataclasses
import math
import time
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch

from stability.spikes import (
    EVENT_COLUMNS,
    OLMO2_RULE,
    ONLINE_RULE,
    OnlineSpikeDetector,
    SpikeEvent,
    SpikeRule,
    attribute,
    detect_events,
    detect_spikes,
    events_to_frame,
    rising,
    spike_score,
)

SMALL_TWO = SpikeRule("two", window=20, sigma=7.0, one_sided=False, min_history=20, percent=True)
SMALL_ONE = SpikeRule("one", window=12, sigma=6.0, one_sided=True, min_history=6, inclusive=False,
                      score_window=100)


def reference_flags(values: list[float], rule: SpikeRule) -> list[bool]:
    """The rule written out by hand: previous finite values, sample std, compare."""
    history: list[float] = []
    flags = []
    for x in values:
        if not math.isfinite(x):
            flags.append(True)
            continue
        prev = history[-rule.window:]
        flag = False
        if len(prev) >= rule.min_history:
            mean = sum(prev) / len(prev)
            std = math.sqrt(sum((v - mean) ** 2 for v in prev) / (len(prev) - 1))
            dev = x - mean if rule.one_sided else abs(x - mean)
            flag = dev != 0 and (dev >= rule.sigma * std if rule.inclusive else dev > rule.sigma * std)
        flags.append(flag)
        history.append(x)
    return flags


def online_flags(values, rule: SpikeRule, steps=None) -> tuple[list[bool], OnlineSpikeDetector]:
    det = OnlineSpikeDetector(rule, "s")
    steps = range(len(values)) if steps is None else steps
    return [det.update(int(s), v) is not None for s, v in zip(steps, values)], det


def noisy(n: int, seed: int, offset: float = 3.0, scale: float = 0.01) -> np.ndarray:
    return offset + scale * np.random.default_rng(seed).standard_normal(n)


def test_hand_series_both_rules():
    x = noisy(120, 0)
    x[10] += 5.0  # before a full window: OLMo 2 (min_history = window = 20) cannot see it
    x[40] += 1.0  # up spike: both
    x[70] -= 1.0  # dip: two-sided only
    x[95] = np.nan  # non-finite: always a spike
    x[100] += 1.0  # after the NaN, judged on the finite values only
    vals = x.tolist()
    two, one = detect_spikes(x, SMALL_TWO), detect_spikes(x, SMALL_ONE)
    assert two.tolist() == reference_flags(vals, SMALL_TWO)
    assert one.tolist() == reference_flags(vals, SMALL_ONE)
    assert np.flatnonzero(two).tolist() == [40, 70, 95, 100]
    assert np.flatnonzero(one).tolist() == [10, 40, 95, 100]
    # OLMo 2 score: percent of evaluated points (99 finite points with 20 previous + the NaN).
    assert spike_score(x, SMALL_TWO) == pytest.approx(100 * 4 / 100)
    early = dataclasses.replace(SMALL_TWO, min_history=5)
    assert detect_spikes(x, early)[10] and reference_flags(vals, early)[10]


def test_default_rules_match_hand_loop():
    x = noisy(2500, 1)
    x[[1200, 1800]] += [0.5, -0.5]
    x[[300, 2100]] = [np.inf, np.nan]
    for rule in (OLMO2_RULE, ONLINE_RULE):
        assert detect_spikes(x, rule).tolist() == reference_flags(x.tolist(), rule)
    assert np.flatnonzero(detect_spikes(x, OLMO2_RULE)).tolist() == [300, 1200, 1800, 2100]
    assert np.flatnonzero(detect_spikes(x, ONLINE_RULE)).tolist() == [300, 1200, 2100]


def test_exact_threshold_and_constant_window():
    # window [-1, 0, 1]: mean 0, sample std 1; x = 2 sits exactly on a 2-sigma threshold.
    incl = SpikeRule("i", window=3, sigma=2.0, one_sided=False, min_history=3)
    strict = dataclasses.replace(incl, inclusive=False)
    for x, want_incl, want_strict in ((2.0, True, False), (-2.0, True, False), (1.999, False, False)):
        series = np.array([-1.0, 0.0, 1.0, x])
        assert detect_spikes(series, incl)[3] == want_incl
        assert detect_spikes(series, strict)[3] == want_strict
    const = np.array([5.0] * 6 + [5.0, 5.000001, 4.999999])
    rule = SpikeRule("c", window=6, sigma=7.0, one_sided=False, min_history=6)
    assert detect_spikes(const, rule).tolist() == [False] * 7 + [True, False]  # 4.999999 vs 5.000001
    assert not detect_spikes(const[:7], rule).any()  # equal to a constant window: no spike
    up = dataclasses.replace(rule, one_sided=True)
    assert detect_spikes(np.array([5.0] * 6 + [4.0]), up).tolist() == [False] * 7


def rational_flags(values: list[float], rule: SpikeRule) -> list[bool]:
    """The rule in exact rational arithmetic: the ground truth at ties and extreme scales."""
    history: list[Fraction] = []
    flags, k2 = [], Fraction(rule.sigma) ** 2
    for x in values:
        if not math.isfinite(x):
            flags.append(True)
            continue
        prev, flag = history[-rule.window:], False
        if len(prev) >= rule.min_history:
            mean = sum(prev) / len(prev)
            var = sum((v - mean) ** 2 for v in prev) / (len(prev) - 1)
            d = Fraction(x) - mean
            d2_ok = d * d >= k2 * var if rule.inclusive else d * d > k2 * var
            flag = d2_ok and (d > 0 if rule.one_sided else d != 0)
        flags.append(flag)
        history.append(Fraction(x))
    return flags


@pytest.mark.parametrize("scale", [1.0, 0.1, 1e-310, 3e200])
def test_exact_on_ties_and_extreme_scales(scale):
    """Few distinct values make exact threshold ties common; 3e200 squared overflows float64."""
    rules = [SpikeRule("a", 3, 1.0, False, 2), SpikeRule("b", 4, 1.5, True, 2, inclusive=False),
             SpikeRule("c", 5, 0.5, False, 3)]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 4, 120).astype(float) * scale
        x[rng.random(120) < 0.05] = np.nan
        for rule in rules:
            want = rational_flags(x.tolist(), rule)
            assert detect_spikes(x, rule).tolist() == want
            assert online_flags(x.tolist(), rule)[0] == want


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rule", [SMALL_TWO, SMALL_ONE, OLMO2_RULE, ONLINE_RULE,
                                  SpikeRule("tiny", window=3, sigma=1.0, one_sided=False, min_history=2)],
                         ids=lambda r: r.name)
def test_online_equals_offline(rule, seed):
    rng = np.random.default_rng(seed)
    n = 2400 if rule.window >= 1000 else 600
    # Large offset with tiny noise stresses running sums; drift, bursts and extreme scales too.
    x = 1e8 + 1e-4 * rng.standard_normal(n) if seed == 3 else noisy(n, seed) + 1e-4 * np.arange(n)
    idx = rng.choice(n, size=12, replace=False)
    x[idx[:8]] += rng.choice([-1, 1], 8) * rng.uniform(0.05, 5, 8) * (1e3 if seed == 3 else 1)
    x[idx[8:10]] = np.nan
    x[idx[10]] = np.inf
    x[idx[11]] = 1e-300 if seed == 2 else -np.inf
    steps = np.cumsum(rng.integers(1, 40, n))
    offline = detect_spikes(x, rule, steps)
    online, det = online_flags(x.tolist(), rule, steps)
    assert offline.tolist() == online
    assert det.count == int(offline.sum()) and det.n_seen == n
    score = spike_score(x, rule, steps)
    assert det.score == score or (math.isnan(score) and math.isnan(det.score))
    online_events = []
    det = OnlineSpikeDetector(rule, "s")
    for s, v in zip(steps, x):
        ev = det.update(int(s), float(v))
        if ev is not None:
            online_events.append(ev)
    pd.testing.assert_frame_equal(events_to_frame(online_events),
                                  events_to_frame(detect_events(x, rule, "s", steps)))


def test_score_window_and_units():
    x = noisy(400, 5)
    x[50] += 1.0
    steps = np.arange(400)
    det = OnlineSpikeDetector(SMALL_ONE)
    for s, v in zip(steps, x):
        det.update(int(s), float(v))
        if s == 90:
            assert det.score == pytest.approx(1 / (91 - 6))  # fraction of the evaluated points
        if s == 149:
            assert det.score == pytest.approx(1 / 100)  # of the last 100 steps
    assert det.score == 0.0 and det.count == 1  # the spike left the last 100 steps
    assert spike_score(x, SMALL_ONE, steps) == 0.0
    assert spike_score(x[:91], SMALL_ONE) == pytest.approx(1 / 85)
    assert math.isnan(spike_score(x[:10], SMALL_TWO))  # nothing evaluated yet
    assert math.isnan(OnlineSpikeDetector(OLMO2_RULE).score)


def test_state_dict_resume(tmp_path):
    x = noisy(3000, 7)
    x[[1100, 1500, 2600]] += [1.0, -1.0, 2.0]
    x[2000] = np.nan
    for rule in (OLMO2_RULE, ONLINE_RULE):
        full, full_det = online_flags(x.tolist(), rule)
        first = OnlineSpikeDetector(rule, "grad")
        flags = [first.update(i, v) is not None for i, v in enumerate(x[:1700])]
        torch.save({"spikes": first.state_dict()}, tmp_path / "ck.pt")
        second = OnlineSpikeDetector(rule)
        second.load_state_dict(torch.load(tmp_path / "ck.pt", weights_only=True)["spikes"])
        assert second.series == "grad"
        flags += [second.update(i, v) is not None for i, v in enumerate(x[1700:], start=1700)]
        assert flags == full
        assert (second.score, second.count, second.n_evaluated) == (
            full_det.score, full_det.count, full_det.n_evaluated)
        with pytest.raises(ValueError, match="steps must increase"):
            second.update(5, 1.0)
    other = OnlineSpikeDetector(SMALL_ONE)
    with pytest.raises(ValueError, match="rule"):
        other.load_state_dict(OnlineSpikeDetector(SMALL_TWO).state_dict())


def test_attribute_picks_planted_layer():
    rng = np.random.default_rng(3)
    scales = np.array([10.0, 1.0, 0.1, 5.0])
    norms = scales * (1 + 0.01 * rng.standard_normal((200, 4)))
    norms[150, 2] *= 3.0  # small layer, large relative jump: the leader
    norms[150, 0] += 0.5  # big layer, larger absolute but smaller relative jump
    norms[149, 1] = np.nan
    layer, z = attribute(150, norms, window=100)
    assert layer == 2 and z > 50
    assert attribute(0, norms, window=100) == (None, None)
    assert attribute(120, norms, window=100)[1] < 5


def test_rising():
    ramp = np.concatenate([np.zeros(50), np.linspace(0, 10, 50)])
    assert rising(ramp, 99, window=20)
    assert not rising(np.full(100, 3.0), 99, window=20)
    assert not rising(np.linspace(10, 0, 100), 99, window=20)
    assert rising(np.r_[np.ones(10), np.inf], 10, window=5)
    assert not rising(np.r_[np.ones(10), np.nan], 10, window=5)
    assert not rising(np.array([1.0, 5.0]), 1, window=5)  # one previous value only


def test_events_to_frame():
    empty = events_to_frame([])
    assert tuple(empty.columns) == EVENT_COLUMNS and len(empty) == 0
    ev = SpikeEvent(7, "train/loss", 4.0, 9.5, 3.0, 0.1, leading_layer=2, leading_sigma=12.0,
                    attn_logit_rising=True, log_z_rising=False)
    frame = events_to_frame([ev, SpikeEvent(9, "grad/norm", math.nan, math.nan, 1.0, 0.2)])
    assert list(frame.columns) == ["step", "series", "value", "sigma", "mean", "std", "leading_layer",
                                   "leading_sigma", "attn_logit_rising", "log_z_rising", "action"]
    assert frame.loc[0, "leading_layer"] == 2 and pd.isna(frame.loc[1, "leading_layer"])
    assert frame.loc[0, "attn_logit_rising"] and pd.isna(frame.loc[1, "log_z_rising"])
    assert "step,series" in frame.to_csv(index=False)


def test_empty_and_all_nan():
    assert detect_spikes(np.array([]), OLMO2_RULE).tolist() == []
    assert math.isnan(spike_score(np.array([]), ONLINE_RULE))
    assert detect_spikes(np.full(3, np.nan), OLMO2_RULE).all()
    assert spike_score(np.full(3, np.nan), OLMO2_RULE) == 100.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        SpikeRule("x", window=10, sigma=7.0, one_sided=False, min_history=1)
    with pytest.raises(ValueError):
        detect_spikes(np.ones(3), OLMO2_RULE, steps=np.array([0, 2, 2]))


def test_timing_sanity(capsys):
    x = noisy(10_000, 11)
    for rule in (OLMO2_RULE, ONLINE_RULE):
        t0 = time.perf_counter()
        detect_spikes(x, rule)
        t1 = time.perf_counter()
        online_flags(x.tolist(), rule)
        t2 = time.perf_counter()
        with capsys.disabled():
            print(f"\n{rule.name}: 10k points offline {1e3 * (t1 - t0):.1f} ms, "
                  f"online {1e3 * (t2 - t1):.1f} ms")
