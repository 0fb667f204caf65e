"""Spike detection over host-side series (loss, grad norm): the OLMo 2 score, OLMo-core's
stability monitor, and a per-series online variant.

`OlmoCoreStability` is OLMo-core's `StabilityMonitorCallback` value for value: the same float
arithmetic on the same windows, so its flags and scores are the callback's (tests/reference/).

The two `SpikeRule`s (`OLMO2_RULE` and the per-series `ONLINE_RULE`) share these definitions, in
both implementations (offline `detect_spikes`, online `OnlineSpikeDetector`), which agree exactly:

- The rolling window is the previous `window` *finite* values. Non-finite values never enter the
  window; a non-finite point is itself always a spike (and always counts as evaluated).
- A finite point is evaluated once the window holds at least `min_history` (>= 2) values; earlier
  points are never spikes and are left out of the score's denominator.
- std is the sample standard deviation (ddof=1), as the on-device skip-step (`stability.optim`).
- Two-sided: |x - mean| >= sigma * std; one-sided: x - mean >= sigma * std; `inclusive=False`
  makes the comparison strict. A point equal to the mean is never a spike, so a constant window
  flags only points that differ from it.
- The decision is made in exact integer arithmetic (each float64 is a dyadic rational), so it has
  no rounding error and no running-sum drift: online and offline flags are bit-for-bit equal.
  Reported mean and std are the exact values correctly rounded to float64.
- Score: spikes / evaluated points, over the whole series (`score_window=None`) or over the
  points whose step lies in the last `score_window` steps; times 100 when `percent`. NaN when
  nothing was evaluated.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SpikeRule:
    """A spike rule: window of previous values, threshold in std units, sidedness, score."""

    name: str
    window: int
    sigma: float
    one_sided: bool
    min_history: int = 2
    inclusive: bool = True
    score_window: int | None = None  # in steps; None: the whole series
    percent: bool = False

    def __post_init__(self) -> None:
        if not (2 <= self.min_history <= self.window and math.isfinite(self.sigma) and self.sigma >= 0
                and (self.score_window is None or self.score_window >= 1)):
            raise ValueError(f"need 2 <= min_history <= window, finite sigma >= 0, score_window >= 1: {self}")


# OLMo 2 report: >= 7 std (two-sided) from the previous 1000 values, percent of the series.
# Strict: a point is judged only with a full window of 1000 previous values.
OLMO2_RULE = SpikeRule("olmo2", window=1000, sigma=7.0, one_sided=False, min_history=1000,
                       inclusive=True, score_window=None, percent=True)
# Per-series online variant: > mean + 6 std (sample std) of the previous 128 finite values, active
# once 64 are known, each series scored on its own as a fraction over the last 10000 steps.
# (OLMo-core's own monitor pools the series and judges only full windows: `OlmoCoreStability`.)
ONLINE_RULE = SpikeRule("online", window=128, sigma=6.0, one_sided=True, min_history=64,
                        inclusive=False, score_window=10000, percent=False)

REWOUND = "rewind"  # a spike event's `action` when training went back from it


@dataclass
class SpikeEvent:
    """One flagged point; the attribution fields are filled by the caller (see `attribute`)."""

    step: int
    series: str
    value: float
    sigma: float  # (value - mean) / std; nan when the window is too short
    mean: float
    std: float
    leading_layer: int | None = None
    leading_sigma: float | None = None
    attn_logit_rising: bool | None = None
    log_z_rising: bool | None = None
    action: str = ""  # REWOUND: training went back from this spike (`train.on_spike`)


EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SpikeEvent))


def _div(a: int, b: int) -> float:
    """a / b for ints, correctly rounded; +-inf on overflow."""
    try:
        return a / b
    except OverflowError:
        return math.inf if (a > 0) == (b > 0) else -math.inf


def _to_int(x: float, shift: int) -> int:
    """x * 2**shift as an exact int (shift must be >= 53 - frexp exponent of x)."""
    m, e = math.frexp(x)
    return int(m * 9007199254740992.0) << (shift - 53 + e) if x != 0.0 else 0


def _is_spike(rule: SpikeRule, d: Any, v: Any, n: Any) -> Any:
    """Exact test on d = n*X - S1 and V = n*S2 - S1**2 (ints or object arrays)."""
    p, q = Fraction(rule.sigma).as_integer_ratio()
    lhs, rhs = d * d * (n - 1) * (q * q), (p * p) * n * v
    hit = (lhs >= rhs) if rule.inclusive else (lhs > rhs)
    return hit & ((d > 0) if rule.one_sided else (d != 0))


def _stats(s1: int, s2: int, n: int, shift: int) -> tuple[float, float]:
    """Mean and sample std of the window, correctly rounded from the exact sums."""
    var = _div(n * s2 - s1 * s1, (n * (n - 1)) << (2 * shift))
    return _div(s1, n << shift), math.sqrt(var)


def _score(rule: SpikeRule, num: int, den: int) -> float:
    return math.nan if den == 0 else (100.0 if rule.percent else 1.0) * num / den


def _z(value: float, mean: float, std: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(value - mean) / np.float64(std))


class OnlineSpikeDetector:
    """Incremental detector for one series, O(1) per point (exact running sums over a ring buffer).

    `score` is per the rule (percent for OLMo 2, fraction for OLMo-core); `count` is the number of
    spikes seen in total. Steps passed to `update` must be strictly increasing.
    """

    def __init__(self, rule: SpikeRule, series: str = "") -> None:
        self.rule, self.series = rule, series
        self._reset()

    def _reset(self) -> None:
        self._buf: deque[float] = deque()
        self._s1 = self._s2 = self._shift = 0
        self.count = self.n_seen = self.n_evaluated = 0
        self.last_step: int | None = None
        self._recent: deque[tuple[int, bool]] = deque()  # (step, flag) of evaluated points
        self._recent_flags = 0

    def _rescale(self, x: float) -> None:
        """Refine the fixed-point scale so that x is an exact integer at it (exact, lossless)."""
        need = 53 - math.frexp(x)[1] if x != 0.0 else 0
        if need > self._shift:
            delta, self._shift = need - self._shift, need
            self._s1 <<= delta
            self._s2 <<= 2 * delta

    def _push(self, x: float) -> None:
        self._rescale(x)
        if len(self._buf) == self.rule.window:
            old = _to_int(self._buf.popleft(), self._shift)
            self._s1 -= old
            self._s2 -= old * old
        xi = _to_int(x, self._shift)
        self._buf.append(x)
        self._s1 += xi
        self._s2 += xi * xi

    def update(self, step: int, value: float) -> SpikeEvent | None:
        """Judge `value` against the previous window, then add it. Returns the event if a spike."""
        step, x = int(step), float(value)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"steps must increase: {step} after {self.last_step}")
        self.last_step, self.n_seen = step, self.n_seen + 1
        n, finite = len(self._buf), math.isfinite(x)
        evaluated, flag = n >= self.rule.min_history or not finite, not finite
        if finite and evaluated:
            self._rescale(x)
            s1 = self._s1
            flag = bool(_is_spike(self.rule, n * _to_int(x, self._shift) - s1, n * self._s2 - s1 * s1, n))
        event = None
        if flag:
            mean, std = _stats(self._s1, self._s2, n, self._shift) if n >= 2 else (math.nan, math.nan)
            event = SpikeEvent(step, self.series, x, _z(x, mean, std), mean, std)
        if finite:
            self._push(x)
        if evaluated:
            self.n_evaluated += 1
            self.count += flag
            if self.rule.score_window is not None:
                self._recent.append((step, flag))
                self._recent_flags += flag
        while self._recent and self._recent[0][0] <= step - (self.rule.score_window or 0):
            self._recent_flags -= self._recent.popleft()[1]
        return event

    @property
    def score(self) -> float:
        if self.rule.score_window is None:
            num, den = self.count, self.n_evaluated
        else:
            num, den = self._recent_flags, len(self._recent)
        return _score(self.rule, num, den)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python containers only (loads with torch.load(weights_only=True))."""
        return {"rule": asdict(self.rule), "series": self.series, "values": list(self._buf),
                "count": self.count, "n_seen": self.n_seen, "n_evaluated": self.n_evaluated,
                "last_step": self.last_step, "recent_steps": [s for s, _ in self._recent],
                "recent_flags": [bool(f) for _, f in self._recent]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if SpikeRule(**state["rule"]) != self.rule:
            raise ValueError(f"state is for rule {state['rule']}, detector has {self.rule}")
        self._reset()
        self.series = state["series"]
        for x in state["values"]:
            self._push(float(x))
        self.count, self.n_seen, self.n_evaluated, self.last_step = (
            state["count"], state["n_seen"], state["n_evaluated"], state["last_step"])
        self._recent = deque(zip(state["recent_steps"], state["recent_flags"]))
        self._recent_flags = sum(state["recent_flags"])


class OlmoCoreStability:
    """OLMo-core's `StabilityMonitorCallback` (olmo_core.train.callbacks), flag for flag.

    Per step it judges the CE loss and the grad norm against the previous `window` values of
    each (a point is a spike when it exceeds mean + sigma * std: population std, only with a full
    window, never when std < 1e-10), then appends them; a step is a spike when either series is.
    Like the callback, a non-finite value is never itself a spike but stays in its window, where
    it blocks every flag until it has left. Scores: `running_score`, the spike fraction of the
    last `score_window` steps (once that many were seen; OLMo-core's `spike/SpikeScore`), and
    `total_score`, the fraction over all steps (once `window` were seen; `spike/SpikeScore
    (total)`). `score` is the running one where it exists, else the total.
    The arithmetic is the callback's (Python floats, same order), so results agree bit for bit.
    """

    MIN_STD = 1e-10

    def __init__(self, window: int = 128, sigma: float = 6.0, score_window: int = 10000) -> None:
        self.window, self.sigma, self.score_window = window, sigma, score_window
        self.history: dict[str, deque[float]] = {}
        self.flags: deque[bool] = deque(maxlen=score_window)
        self.total_spikes = self.total_steps = self.recent_spikes = 0

    @staticmethod
    def _stats(history: deque[float]) -> tuple[float, float]:
        mean = sum(history) / len(history)
        variance = sum((x - mean) ** 2 for x in history) / len(history)
        return mean, math.sqrt(variance)

    def _judge(self, series: str, value: float) -> tuple[bool, float, float]:
        """(spike?, mean, std) of `value` against its series' window, which it then joins."""
        history = self.history.setdefault(series, deque(maxlen=self.window))
        spike, mean, std = False, math.nan, math.nan
        if len(history) >= self.window:
            mean, std = self._stats(history)
            spike = not std < self.MIN_STD and value > mean + self.sigma * std
        history.append(value)
        return spike, mean, std

    def update(self, step: int, values: dict[str, float]) -> list[SpikeEvent]:
        """Judge one step's values ({series: value}, e.g. CE loss and grad norm); the events of
        the series that spiked."""
        events = []
        for series, value in values.items():
            spike, mean, std = self._judge(series, float(value))
            if spike:
                events.append(SpikeEvent(int(step), series, float(value), _z(value, mean, std),
                                         mean, std))
        if len(self.flags) == self.score_window:
            self.recent_spikes -= self.flags[0]
        self.flags.append(bool(events))
        self.recent_spikes += bool(events)
        self.total_steps += 1
        self.total_spikes += bool(events)
        return events

    @property
    def running_score(self) -> float | None:
        if len(self.flags) < self.score_window:
            return None
        return self.recent_spikes / self.score_window

    @property
    def total_score(self) -> float | None:
        if self.total_steps < self.window:
            return None
        return self.total_spikes / self.total_steps

    @property
    def score(self) -> float | None:
        running = self.running_score
        return running if running is not None else self.total_score

    def state_dict(self) -> dict[str, Any]:
        """Plain Python containers only (loads with torch.load(weights_only=True))."""
        return {"window": self.window, "sigma": self.sigma, "score_window": self.score_window,
                "history": {k: list(v) for k, v in self.history.items()},
                "flags": list(self.flags), "total_spikes": self.total_spikes,
                "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["window"], state["sigma"], state["score_window"]) != (
                self.window, self.sigma, self.score_window):
            raise ValueError("state is for another OLMo-core monitor configuration")
        self.history = {k: deque(v, maxlen=self.window) for k, v in state["history"].items()}
        self.flags = deque(state["flags"], maxlen=self.score_window)
        self.recent_spikes = sum(self.flags)
        self.total_spikes, self.total_steps = state["total_spikes"], state["total_steps"]


def _check(values: np.ndarray, steps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    steps = np.arange(len(values)) if steps is None else np.asarray(steps, dtype=np.int64)
    if steps.shape != values.shape or (len(steps) > 1 and np.any(np.diff(steps) <= 0)):
        raise ValueError("steps must be strictly increasing and as long as values")
    return values, steps


def _offline(values: np.ndarray, rule: SpikeRule) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Flags, evaluated mask and the exact window sums (object arrays) of the finite points."""
    finite = np.isfinite(values)
    fv = values[finite]
    m, e = np.frexp(fv)
    shift = max(0, int((53 - e[fv != 0]).max())) if np.any(fv != 0) else 0
    xi = (m * 2.0**53).astype(np.int64).astype(object) << np.maximum(shift - 53 + e, 0).astype(object)
    zero = np.zeros(1, dtype=object)
    p1, p2 = np.concatenate([zero, np.cumsum(xi)]), np.concatenate([zero, np.cumsum(xi * xi)])
    j = np.arange(len(fv))
    n = np.minimum(j, rule.window)
    ev = n >= rule.min_history
    je, ne = j[ev], n[ev]
    s1, s2 = p1[je] - p1[je - ne], p2[je] - p2[je - ne]
    no = ne.astype(object)
    hit = np.zeros(len(fv), dtype=bool)
    hit[ev] = np.asarray(_is_spike(rule, no * xi[ev] - s1, no * s2 - s1 * s1, no), dtype=bool)
    flags, evaluated = ~finite, ~finite
    flags[finite], evaluated[finite] = hit, ev
    return flags, evaluated, {"finite": finite, "p1": p1, "p2": p2, "shift": shift}


def detect_spikes(values: np.ndarray, rule: SpikeRule, steps: np.ndarray | None = None) -> np.ndarray:
    """Boolean spike flags for a whole series (same decisions as `OnlineSpikeDetector`).

    `steps` (optional) is only checked (strictly increasing); it matters for `spike_score`.
    """
    values, _ = _check(values, steps)
    return _offline(values, rule)[0]


def spike_score(values: np.ndarray, rule: SpikeRule, steps: np.ndarray | None = None) -> float:
    """The rule's score of a whole series (= the online detector's `score` after its last point)."""
    values, steps = _check(values, steps)
    flags, evaluated, _ = _offline(values, rule)
    if rule.score_window is not None and len(steps):
        evaluated = evaluated & (steps > steps[-1] - rule.score_window)
    return _score(rule, int(flags[evaluated].sum()), int(evaluated.sum()))


def detect_events(values: np.ndarray, rule: SpikeRule, series: str = "",
                  steps: np.ndarray | None = None) -> list[SpikeEvent]:
    """The events `OnlineSpikeDetector` would emit for this series, computed offline."""
    values, steps = _check(values, steps)
    flags, _, ex = _offline(values, rule)
    k = np.cumsum(ex["finite"]) - ex["finite"]  # finite values before each point
    events = []
    for i in np.flatnonzero(flags):
        n = min(int(k[i]), rule.window)
        mean = std = math.nan
        if n >= 2:
            hi, lo = int(k[i]), int(k[i]) - n
            mean, std = _stats(ex["p1"][hi] - ex["p1"][lo], ex["p2"][hi] - ex["p2"][lo], n, ex["shift"])
        x = float(values[i])
        events.append(SpikeEvent(int(steps[i]), series, x, _z(x, mean, std), mean, std))
    return events


def _prev_stats(x: np.ndarray, i: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample std and count of the finite values in x[i - window:i] (along axis 0)."""
    prev = x[max(0, i - window):i]
    ok = np.isfinite(prev)
    cnt = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, prev, 0.0).sum(axis=0) / cnt
        var = np.where(ok, (prev - mean) ** 2, 0.0).sum(axis=0) / (cnt - 1)
    return mean, np.sqrt(var), cnt


def attribute(step_index: int, layer_norms: np.ndarray, window: int) -> tuple[int | None, float | None]:
    """The layer whose grad norm rose most at `step_index`, in units of its own rolling std.

    z_l = (g[t, l] - mean_l) / std_l over the finite values of the previous `window` rows (sample
    std); the largest upward z wins (spikes are upward excursions). (None, None) when no layer has
    two previous finite values and a finite value at the step.
    """
    g = np.asarray(layer_norms, dtype=np.float64)
    if g.ndim != 2 or not 0 <= step_index < len(g):
        raise ValueError(f"need layer_norms [T, L] and 0 <= step_index < T, got {g.shape}, {step_index}")
    mean, std, cnt = _prev_stats(g, step_index, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (g[step_index] - mean) / std
    z[(cnt < 2) | ~np.isfinite(g[step_index]) | np.isnan(z)] = -np.inf
    if not np.any(z > -np.inf):
        return None, None
    layer = int(np.argmax(z))
    return layer, float(z[layer])


def rising(series: np.ndarray, step_index: int, window: int) -> bool:
    """Whether the series rose into `step_index`: its value there exceeds the mean of the previous
    `window` finite values by more than one sample std (a steady linear rise gives ~1.7 std).
    False with fewer than two previous finite values or a NaN at the step."""
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 1 or not 0 <= step_index < len(x):
        raise ValueError(f"need a 1-D series and 0 <= step_index < len, got {x.shape}, {step_index}")
    mean, std, cnt = _prev_stats(x, step_index, window)
    return bool(cnt >= 2 and x[step_index] > mean + std)


def events_to_frame(events: list[SpikeEvent]) -> pd.DataFrame:
    """Events as the `spikes.csv` table, one row per event, columns `EVENT_COLUMNS`."""
    frame = pd.DataFrame([asdict(e) for e in events], columns=list(EVENT_COLUMNS))
    dtypes = {"step": "int64", "series": "object", "value": "float64", "sigma": "float64",
              "mean": "float64", "std": "float64", "leading_layer": "Int64", "leading_sigma": "float64",
              "attn_logit_rising": "boolean", "log_z_rising": "boolean",
              "action": "object"}
    return frame.astype(dtypes)
