"""Lead-lag of loss spikes: which signals left their own recent range first, in which layer, and
how many steps before the loss spiked (docs/leadlag.md).

The OLMo 2 report finds gradient-norm spikes ahead of loss spikes; a public log of a 32B run saw
Adam update-norm spikes ~2 steps ahead, larger in lower layers. This module measures that from
logged data, pandas and numpy only.

The onset rule, per loss spike at step s and per series (a signal's whole-model series, layer -1,
or one layer's):

- baseline: the last `baseline` finite points with step < s - `horizon` (an earlier spike's few
  points in it move a median and a MAD little); fewer than `min_baseline`: no baseline.
- range: median +- z * scale, scale = 1.4826 * MAD of the baseline (floored at 1e-6 of |median|,
  so a constant series' float noise is no departure); direction-aware: only an excursion UP
  counts for norms, logits and ratios, only a DROP for the update-gradient cosine.
- onset: the first point in [s - horizon, s] outside the range (NaN points skipped, +-inf are
  outside any finite range); lead = s - onset (0: the same step; NaN: it never left its range).
  A sampled signal (every `probes.every` steps) can only leave at a sample: its lead is then
  quantised to its cadence (the true onset lies in (previous sample, onset]).
- sigma: the largest excursion in the window, in robust sigmas (positive: the departure side).

A signal's onset at a spike is the earliest over its series (ties: larger excursion); its leading
layer the earliest of its per-layer series. The spike's first signal is the earliest signal
(ties: larger excursion, then `SIGNALS` order). A loss spike within `horizon` steps after
another one is part of that one's event (counted, not analysed again); one no signal has a
baseline for is too early (counted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports import frames as F
from stability import metric_names as M

HORIZON = 20  # steps before a loss spike in which an onset counts
BASELINE = 100  # points before the window that make a series' recent range
MIN_BASELINE = 20  # fewer points: no range, the spike is too early for that series (Gaussian
# noise, a 16-layer per-step signal: 18% of windows cross 5 robust sigmas of a 20-point baseline,
# 46% of a 12-point one; so a probe signal sampled every 10 steps is judged from step ~220 on)
Z = 5.0  # robust sigmas from the median that are a departure (Gaussian noise: 0.2% of the
# 21-step windows of a 16-layer signal have a point beyond 5 with a 100-point baseline, 5% beyond 4)
AFTER = 10  # steps after the spike the event-aligned averages run to
MAD_SCALE = 1.4826  # MAD -> sigma for normal data
REL_FLOOR = 1e-6  # the scale's floor, relative to |median|
ABS_FLOOR = 1e-12
CLIP = 1e3  # event-aligned excursions are clipped here, so one inf does not make a mean inf
UP, DOWN = 1, -1
LOSS_SERIES = (M.TRAIN_CE_LOSS, M.TRAIN_LOSS)  # spike events of either are loss spikes
WHOLE = -1  # the layer of a whole-model series


@dataclass(frozen=True)
class Signal:
    """A signal the analysis looks at: its metric key, a short name, which way is a departure
    and the figure panel (family) it is drawn in."""

    key: str
    name: str
    direction: int
    family: str


SIGNALS: tuple[Signal, ...] = (
    Signal(M.GRAD_NORM, "grad norm", UP, "Gradient norm"),
    Signal(M.UPDATE_RMS, "Adam update RMS", UP, "Adam update"),
    Signal(M.UPDATE_GRAD_COS, "update-gradient cosine", DOWN, "Adam update"),
    Signal(M.GRAD_V_RATIO_MAX, "max g²/v ratio", UP, "Max g²/v ratio"),
    Signal(M.ATTN_LOGIT_MAX, "max attention logit", UP, "Max attention logit"),
    Signal(M.LOGITS_LOG_Z_MEAN, "mean log Z", UP, "Output log Z"),
    Signal(M.LOGITS_LOG_Z_MAX, "max log Z", UP, "Output log Z"),
    Signal(M.ACT_ATTN_OUT_RMS, "attention output RMS", UP, "Sublayer outputs"),
    Signal(M.ACT_MLP_OUT_RMS, "MLP output RMS", UP, "Sublayer outputs"),
)
BY_KEY = {s.key: s for s in SIGNALS}
FAMILIES = tuple(dict.fromkeys(s.family for s in SIGNALS))

# {signal key: {layer (WHOLE for the whole-model series): values indexed by step}}
SignalSeries = Mapping[str, Mapping[int, pd.Series]]

ONSET_COLUMNS = ("spike", "signal", "layer", "status", "onset", "lead", "sigma", "cadence")
SIGNAL_COLUMNS = (F.RUN_ID, F.ARM, "spike", "signal", "status", "lead", "layer", "sigma", "cadence", "first")
SPIKE_COLUMNS = (F.RUN_ID, F.ARM, "step", "status", "first_signal", "first_layer", "first_lead")
SUMMARY_COLUMNS = ("signal", "name", "logged", "n_spikes", "n", "preceded", "first", "same_step",
                   "median_lead", "leading_layer", "layer_share", "cadence")
# statuses of a (spike, series) and of a (spike, signal)
DEPARTED, IN_RANGE, NO_SAMPLE, NO_BASELINE = "departed", "in_range", "no_sample", "no_baseline"
JUDGED = (DEPARTED, IN_RANGE)
# statuses of a loss spike
ANALYSED, OVERLAPPING, TOO_EARLY, NO_SIGNALS = "analysed", "overlapping", "too_early", "no_signals"


def direction_of(key: str) -> int:
    """UP or DOWN: which way `key` departs (unknown keys: UP)."""
    return BY_KEY[key].direction if key in BY_KEY else UP


def name_of(key: str) -> str:
    """The short name of a signal ("grad norm"); the key itself for one not in `SIGNALS`."""
    return BY_KEY[key].name if key in BY_KEY else key


# ------------------------------------------------------------------------------- spike steps
def loss_spike_steps(spikes: pd.DataFrame) -> dict[str, list[int]]:
    """{run id: sorted distinct steps of its loss spikes}: spike events (any rule) of a
    `LOSS_SERIES` metric; several rules at one step are one spike. Spikes training rewound from
    (action "rewind") are left out: the logged series hold the re-run steps, not theirs."""
    if spikes is None or not len(spikes):
        return {}
    metric = spikes["series"].astype(str).str.rsplit("@", n=1).str[0]
    loss = spikes[metric.isin(LOSS_SERIES) & ~F.rewound(spikes)]
    steps = pd.to_numeric(loss["step"], errors="coerce")
    out: dict[str, list[int]] = {}
    for rid, s in steps.groupby(loss[F.RUN_ID].astype(str), sort=False):
        out[rid] = sorted({int(x) for x in s.dropna()})
    return out


def clusters(spike_steps: Iterable[int], horizon: int = HORIZON) -> tuple[list[int], list[int]]:
    """(leading spikes, overlapping ones): a spike within `horizon` steps after the previous one
    belongs to that one's event, so its window would hold the earlier spike's own signals."""
    steps = sorted(set(int(s) for s in spike_steps))
    lead = [s for i, s in enumerate(steps) if i == 0 or s - steps[i - 1] > horizon]
    return lead, [s for s in steps if s not in set(lead)]


# ------------------------------------------------------------------------------- one series
def _arrays(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) as float arrays, sorted by step, a repeated step keeping its last value."""
    s = series[~series.index.duplicated(keep="last")].sort_index()
    return s.index.to_numpy(dtype=np.float64), pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)


def cadence_of(steps: np.ndarray) -> float:
    """The median step interval of a series (its sampling cadence); NaN under two points."""
    return float(np.median(np.diff(steps))) if steps.size >= 2 else math.nan


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """(median, scale) of baseline values: scale = 1.4826 * MAD, floored (a constant series)."""
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return med, max(MAD_SCALE * mad, REL_FLOOR * abs(med), ABS_FLOOR)


def _baseline(steps: np.ndarray, values: np.ndarray, keep: np.ndarray, spike: int, horizon: int,
              baseline: int, min_baseline: int) -> tuple[float, float] | None:
    """The robust range of the points before the spike's window, None with too few."""
    idx = np.flatnonzero(keep & (steps < spike - horizon))[-baseline:]
    return robust_range(values[idx]) if idx.size >= max(min_baseline, 1) else None


def excursion(values: np.ndarray, med: float, scale: float, direction: int) -> np.ndarray:
    """Robust sigmas from the median, positive on the departure side (+-inf stay infinite)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return direction * (values - med) / scale


def _series_onsets(steps: np.ndarray, values: np.ndarray, spikes: Sequence[int], *, direction: int,
                   horizon: int, baseline: int, min_baseline: int, z: float) -> list[tuple]:
    """(spike, status, onset, lead, sigma) per spike, for one series."""
    keep = np.isfinite(values)
    out = []
    for s in spikes:
        rng = _baseline(steps, values, keep, s, horizon, baseline, min_baseline)
        win = (steps >= s - horizon) & (steps <= s) & ~np.isnan(values)
        if rng is None or not win.any():
            out.append((s, NO_BASELINE if rng is None else NO_SAMPLE, math.nan, math.nan, math.nan))
            continue
        exc = excursion(values[win], *rng, direction)
        beyond = exc > z
        sigma = float(np.max(exc))
        if beyond.any():
            onset = float(steps[win][int(np.argmax(beyond))])
            out.append((s, DEPARTED, onset, s - onset, sigma))
        else:
            out.append((s, IN_RANGE, math.nan, math.nan, sigma))
    return out


# ------------------------------------------------------------------------------- onsets
def onsets(series_by_signal: SignalSeries, spike_steps: Sequence[int], *, horizon: int = HORIZON,
           baseline: int = BASELINE, min_baseline: int = MIN_BASELINE, z: float = Z,
           directions: Mapping[str, int] | None = None) -> pd.DataFrame:
    """One row per (loss spike, signal, layer): status, onset step, lead, sigma, cadence (the
    module's rule). `spike_steps`: the spikes to analyse (see `clusters`); `directions`:
    {key: UP | DOWN} overriding `direction_of`. A signal or layer with no series has no rows."""
    rows = []
    for key, layers in series_by_signal.items():
        direction = (directions or {}).get(key, direction_of(key))
        for layer, series in sorted(layers.items()):
            steps, values = _arrays(series)
            cadence = cadence_of(steps)
            for s, status, onset, lead, sigma in _series_onsets(
                    steps, values, spike_steps, direction=direction, horizon=horizon,
                    baseline=baseline, min_baseline=min_baseline, z=z):
                rows.append((int(s), key, int(layer), status, onset, lead, sigma, cadence))
    frame = pd.DataFrame(rows, columns=list(ONSET_COLUMNS))
    return frame.astype({"spike": "int64", "layer": "int64", "onset": "float64", "lead": "float64",
                         "sigma": "float64", "cadence": "float64"})


def _status(statuses: pd.Series) -> str:
    """A signal's status at a spike from its series': departed > in range > no sample > none."""
    for status in (DEPARTED, IN_RANGE, NO_SAMPLE):
        if (statuses == status).any():
            return status
    return NO_BASELINE


def _earliest(rows: pd.DataFrame) -> pd.Series | None:
    """The departed row with the largest lead (ties: larger sigma, then lower layer)."""
    hit = rows[rows["status"] == DEPARTED]
    if not len(hit):
        return None
    return hit.sort_values(["lead", "sigma", "layer"], ascending=[False, False, True], kind="stable").iloc[0]


def leaders(onset_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (spike, signal) of `onsets` rows: status, lead (its earliest series), layer
    (its earliest per-layer series; NA for a whole-model signal or none departed), sigma (of the
    earliest series; the largest of any when none departed), cadence (the coarsest of its judged
    series: the lead's resolution) and `first` (the spike's earliest signal; ties: larger sigma,
    then `SIGNALS` order)."""
    order = {s.key: i for i, s in enumerate(SIGNALS)}
    rows = []
    for (spike, key), g in onset_rows.groupby(["spike", "signal"], sort=False):
        best = _earliest(g)
        layered = _earliest(g[g["layer"] > WHOLE])
        judged = g[g["status"].isin(JUDGED)]
        peak = float(judged["sigma"].max()) if len(judged) else math.nan  # how close it came
        rows.append({"spike": int(spike), "signal": key, "status": _status(g["status"]),
                     "lead": math.nan if best is None else float(best["lead"]),
                     "layer": pd.NA if layered is None else int(layered["layer"]),
                     "sigma": peak if best is None else float(best["sigma"]),
                     "cadence": float(judged["cadence"].max()) if len(judged) else math.nan})
    out = pd.DataFrame(rows, columns=["spike", "signal", "status", "lead", "layer", "sigma", "cadence"])
    out["layer"] = out["layer"].astype("Int64")
    out["_o"] = out["signal"].map(order).fillna(len(order))
    out["first"] = False
    departed = out[out["status"] == DEPARTED].sort_values(
        ["spike", "lead", "sigma", "_o"], ascending=[True, False, False, True], kind="stable")
    out.loc[departed.drop_duplicates("spike").index, "first"] = True
    return out.sort_values(["spike", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


# ------------------------------------------------------------------------------- runs and grids
@dataclass
class LeadLag:
    """The lead-lag of a grid's loss spikes.

    `signals`: one row per (run, analysed loss spike, signal logged in the run) (`SIGNAL_COLUMNS`);
    `spikes`: one row per loss spike, analysed or not, with its first signal (`SPIKE_COLUMNS`);
    `logged`: {run id: the signal keys it has a series of}; the parameters used.
    """

    signals: pd.DataFrame
    spikes: pd.DataFrame
    logged: dict[str, set[str]] = field(default_factory=dict)
    horizon: int = HORIZON
    baseline: int = BASELINE
    min_baseline: int = MIN_BASELINE
    z: float = Z

    @property
    def n_loss_spikes(self) -> int:
        return len(self.spikes)


def run_leadlag(series_by_signal: SignalSeries, spike_steps: Sequence[int], *, horizon: int = HORIZON,
                baseline: int = BASELINE, min_baseline: int = MIN_BASELINE, z: float = Z
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per (spike, signal) rows as `leaders`, per spike rows: step, status, first signal, its
    layer and lead) of one run: overlapping spikes and those too early for any baseline are
    counted in the second frame, not analysed."""
    lead, overlapping = clusters(spike_steps, horizon)
    rows = onsets(series_by_signal, lead, horizon=horizon, baseline=baseline, min_baseline=min_baseline, z=z)
    per_signal = leaders(rows) if len(rows) else pd.DataFrame(columns=[*SIGNAL_COLUMNS[2:]])
    based = set(per_signal.loc[per_signal["status"] != NO_BASELINE, "spike"])
    per_signal = per_signal[per_signal["spike"].isin(based)].reset_index(drop=True)
    records = []
    for s in sorted(set(lead) | set(overlapping)):
        if s in overlapping:
            status = OVERLAPPING
        elif not series_by_signal:
            status = NO_SIGNALS
        else:
            status = ANALYSED if s in based else TOO_EARLY
        first = per_signal[(per_signal["spike"] == s) & per_signal["first"].astype(bool)]
        top = first.iloc[0] if len(first) else None
        records.append({"step": s, "status": status,
                        "first_signal": None if top is None else top["signal"],
                        "first_layer": pd.NA if top is None else top["layer"],
                        "first_lead": math.nan if top is None else float(top["lead"])})
    spikes = pd.DataFrame(records, columns=["step", "status", "first_signal", "first_layer", "first_lead"])
    spikes["first_layer"] = spikes["first_layer"].astype("Int64")
    return per_signal, spikes


def grid_series(grid: F.GridData, run_ids: Iterable[str], signals: Sequence[Signal] = SIGNALS
                ) -> dict[str, dict[str, dict[int, pd.Series]]]:
    """{run id: {signal key: {layer: values by step}}} of the signals each run logged: the
    whole-model MLflow series (layer `WHOLE`) and the per-layer ones (`frames.layer_frame`: the
    dense artifact, max over heads, else the MLflow `key/layer_i` series)."""
    ids = [str(r) for r in run_ids]
    out: dict[str, dict[str, dict[int, pd.Series]]] = {rid: {} for rid in ids}
    if not ids:
        return out
    s = grid.series
    s = s[s[F.RUN_ID].isin(set(ids))] if len(s) else s
    for sig in signals:
        whole = s[s["metric"] == sig.key] if len(s) else s
        for rid, g in whole.groupby(F.RUN_ID, sort=False):
            out[str(rid)].setdefault(sig.key, {})[WHOLE] = _by_step(g)
        layers = F.layer_frame(grid, sig.key, ids)
        for (rid, layer), g in layers.groupby([F.RUN_ID, "layer"], sort=True):
            out[str(rid)].setdefault(sig.key, {})[int(layer)] = _by_step(g)
    return out


def _by_step(rows: pd.DataFrame) -> pd.Series:
    values = pd.to_numeric(rows["value"], errors="coerce").to_numpy(dtype=np.float64)
    return pd.Series(values, index=rows["step"].to_numpy(dtype=np.int64))


def grid_leadlag(grid: F.GridData, *, horizon: int = HORIZON, baseline: int = BASELINE,
                 min_baseline: int = MIN_BASELINE, z: float = Z) -> LeadLag:
    """`run_leadlag` for every run of `grid` with loss spikes (spikes.csv), with run id and arm."""
    steps = loss_spike_steps(grid.spikes)
    arm_of = dict(zip(grid.runs[F.RUN_ID].astype(str), grid.runs[F.ARM]))
    steps = {rid: s for rid, s in steps.items() if rid in arm_of and s}
    series = grid_series(grid, list(steps))
    signal_parts, spike_parts = [], []
    for rid, spike_steps in steps.items():
        per_signal, spikes = run_leadlag(series[rid], spike_steps, horizon=horizon, baseline=baseline,
                                         min_baseline=min_baseline, z=z)
        for part, bucket in ((per_signal, signal_parts), (spikes, spike_parts)):
            part = part.copy()
            part.insert(0, F.ARM, arm_of[rid])
            part.insert(0, F.RUN_ID, rid)
            bucket.append(part)
    signals = _concat(signal_parts, SIGNAL_COLUMNS)
    spikes = _concat(spike_parts, SPIKE_COLUMNS)
    logged = {rid: set(series[rid]) for rid in steps}
    return LeadLag(signals, spikes, logged, horizon=horizon, baseline=baseline, min_baseline=min_baseline,
                   z=z)


def _concat(parts: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(parts, ignore_index=True)[list(columns)]


# ------------------------------------------------------------------------------- aggregates
def summarize(lead: LeadLag, by: str | None = F.ARM) -> pd.DataFrame:
    """Per group (`by`: "arm", "run_id" or None for the whole grid) and signal of `SIGNALS`:
    logged (any run of the group has it), n_spikes (analysed loss spikes), n (those the signal
    could be judged at: a baseline and a sample in the window), preceded (share of n with
    lead > 0), first (share of n where it was the spike's first signal, ahead of it), same_step
    (share of n where it left its range at the spike's own step, lead 0: it rose with the loss,
    as after a bad batch, rather than before it), median_lead (over the
    spikes it preceded), leading_layer (the layer that led most often among those; ties: the
    lower) with layer_share, cadence (the coarsest sampling interval, in steps: the lead's
    resolution). Groups without an analysed loss spike have no rows."""
    spikes = lead.spikes[lead.spikes["status"] == ANALYSED]
    key = by if by is not None else "_all"
    spikes = spikes.assign(_all="all")
    rows = lead.signals.assign(_all="all")
    out = []
    for group, sp in spikes.groupby(key, sort=False):
        runs = set(sp[F.RUN_ID])
        logged = set().union(*(lead.logged.get(r, set()) for r in runs))
        g = rows[rows[key] == group]
        for sig in SIGNALS:
            record = _signal_summary(g[g["signal"] == sig.key], len(sp))
            out.append({**({by: group} if by else {}), "signal": sig.key, "name": sig.name,
                        "logged": sig.key in logged, **record})
    columns = ([by] if by else []) + list(SUMMARY_COLUMNS)
    return pd.DataFrame(out, columns=columns)


def _signal_summary(rows: pd.DataFrame, n_spikes: int) -> dict:
    judged = rows[rows["status"].isin(JUDGED)]
    n = len(judged)
    ahead = judged[judged["lead"] > 0]
    layers = ahead["layer"].dropna().astype(int)
    counts = layers.value_counts()
    top = int(min(counts[counts == counts.max()].index)) if len(counts) else None
    return {"n_spikes": n_spikes, "n": n,
            "preceded": len(ahead) / n if n else math.nan,
            "first": float((judged["first"].astype(bool) & (judged["lead"] > 0)).sum()) / n
            if n else math.nan,
            "same_step": float((judged["lead"] == 0).sum()) / n if n else math.nan,
            "median_lead": float(ahead["lead"].median()) if len(ahead) else math.nan,
            "leading_layer": top if top is not None else pd.NA,
            "layer_share": float(counts[top]) / len(ahead) if top is not None else math.nan,
            "cadence": float(judged["cadence"].max()) if n else math.nan}


def pct(share: float) -> str:
    """A share as "80%"."""
    return f"{100.0 * share:.0f}%"


def steps_text(x: float) -> str:
    """"1 step", "5 steps", "2.5 steps"."""
    return f"{x:g} step" + ("" if x == 1 else "s")


def sentence(row: Mapping) -> str:
    """"grad norm led in 80% of 5 loss spikes, median 4 steps ahead; layer 3 led in 75% of
    those" for a `summarize` row (the layer clause only for a per-layer signal)."""
    n = int(row["n"])
    if not n:
        return f"{row['name']}: not judged at any loss spike"
    if not row["preceded"] > 0:
        return f"{row['name']} left its range before none of {n} loss spike{'s' if n > 1 else ''}"
    text = (f"{row['name']} led in {pct(row['preceded'])} of {n} loss spike{'s' if n > 1 else ''}, "
            f"median {steps_text(row['median_lead'])} ahead")
    if not pd.isna(row["leading_layer"]):
        text += f"; layer {int(row['leading_layer'])} led in {pct(row['layer_share'])} of those"
    return text


def top_signal(summary: pd.DataFrame) -> pd.Series | None:
    """The row of the signal that preceded most loss spikes (ties: more often first, then the
    longer median lead, then `SIGNALS` order); None when none preceded any."""
    ahead = summary[summary["preceded"].fillna(0) > 0]
    if not len(ahead):
        return None
    return ahead.sort_values(["preceded", "first", "median_lead"], ascending=False, kind="stable").iloc[0]


def group_sentence(summary: pd.DataFrame) -> str:
    """The sentence of one group's summary rows: its top signal's `sentence`, or why none."""
    top = top_signal(summary)
    if top is not None:
        return sentence(top)
    n = int(summary["n_spikes"].max()) if len(summary) else 0
    text = f"no signal left its range before any of {n} loss spike{'s' if n != 1 else ''}"
    with_it = summary[summary["same_step"].fillna(0) > 0]
    if len(with_it):
        row = with_it.sort_values("same_step", ascending=False, kind="stable").iloc[0]
        text += f"; {row['name']} rose at the spike's own step in {pct(row['same_step'])} of them"
    return text


def not_logged(summary: pd.DataFrame) -> list[str]:
    """Names of the signals no run of the group logged."""
    return summary.loc[~summary["logged"].astype(bool), "name"].tolist()


# ------------------------------------------------------------------------------- event-aligned
def event_aligned(series_by_signal: SignalSeries, spike_steps: Sequence[int], *, horizon: int = HORIZON,
                  after: int = AFTER, baseline: int = BASELINE, min_baseline: int = MIN_BASELINE
                  ) -> pd.DataFrame:
    """(spike, signal, offset, excursion) around each spike, offsets -horizon..+after: each series
    in robust sigmas from its baseline (the same as `onsets`', departure side positive, clipped
    at +-`CLIP`), a per-layer signal as its furthest-out layer at each step."""
    parts = []
    for key, layers in series_by_signal.items():
        direction = direction_of(key)
        per_layer = []
        for _, series in sorted(layers.items()):
            steps, values = _arrays(series)
            keep = np.isfinite(values)
            for s in spike_steps:
                rng = _baseline(steps, values, keep, s, horizon, baseline, min_baseline)
                win = (steps >= s - horizon) & (steps <= s + after) & ~np.isnan(values)
                if rng is None or not win.any():
                    continue
                exc = np.clip(excursion(values[win], *rng, direction), -CLIP, CLIP)
                per_layer.append(pd.DataFrame({"spike": int(s), "offset": steps[win] - s, "excursion": exc}))
        if per_layer:
            frame = pd.concat(per_layer, ignore_index=True)
            frame = frame.groupby(["spike", "offset"], as_index=False)["excursion"].max()
            parts.append(frame.assign(signal=key))
    if not parts:
        return pd.DataFrame({"spike": pd.Series(dtype="int64"), "signal": pd.Series(dtype=object),
                             "offset": pd.Series(dtype="float64"), "excursion": pd.Series(dtype="float64")})
    return pd.concat(parts, ignore_index=True)[["spike", "signal", "offset", "excursion"]]


def grid_event_aligned(grid: F.GridData, lead: LeadLag | None = None, *, after: int = AFTER) -> pd.DataFrame:
    """`event_aligned` over the analysed loss spikes of every run, with run id and arm, on the
    baselines of `lead` (the grid's `grid_leadlag`, computed with the defaults when None)."""
    lead = grid_leadlag(grid) if lead is None else lead
    analysed = lead.spikes[lead.spikes["status"] == ANALYSED]
    series = grid_series(grid, analysed[F.RUN_ID].unique())
    parts = []
    for (rid, arm), sp in analysed.groupby([F.RUN_ID, F.ARM], sort=False):
        frame = event_aligned(series[rid], sp["step"].astype(int).tolist(), horizon=lead.horizon, after=after,
                              baseline=lead.baseline, min_baseline=lead.min_baseline)
        parts.append(frame.assign(**{F.RUN_ID: rid, F.ARM: arm}))
    return _concat(parts, (F.RUN_ID, F.ARM, "spike", "signal", "offset", "excursion"))


def aligned_means(aligned: pd.DataFrame, by: str | None = F.ARM) -> pd.DataFrame:
    """Mean excursion and number of spikes per (group, signal, offset) of `event_aligned` rows."""
    keys = ([by] if by else []) + ["signal", "offset"]
    if not len(aligned):
        return pd.DataFrame(columns=[*keys, "mean", "n"])
    g = aligned.groupby(keys, sort=False)["excursion"]
    out = pd.DataFrame({"mean": g.mean(), "n": g.size()}).reset_index()
    return out.sort_values(keys, kind="stable").reset_index(drop=True)
