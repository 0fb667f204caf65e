"""What the dashboard shows, built once per load of a `GridData`: per-series arrays and the overview.

`DashData.from_grid` turns the long frames into what the page and its server need:

- `SeriesIndex`: sorted (steps, values) per (run, metric key). Per-layer rows of the dense
  artifact become `prefix/layer_i` keys (max over heads) where MLflow has no such key, so the
  per-layer views work for whichever of the two a run wrote.
- `merge_events`: one spike event per (run, step), listing every rule that fired there (spikes.csv
  has a row per rule and series) with its sigma, the leading layer, whether the attention
  logits or log Z were rising before it and, for a loss spike, its precursors: the signals that
  left their range before it, with layer and lead (`event_precursors`, from `reports.leadlag`).
- `overview`: the JSON the page starts from: runs (identity, status, summaries, params), groups
  (an arm at one learning rate, the seeds of which make a band), the metric catalogue in the
  order of `stability.metric_names`, the events, and the paired differences against the baseline
  as `reports.stats.compare_arms` computes them for the report (same test, same resamples).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from reports import frames as F
from reports import leadlag as LL
from stability import metric_names as M

LAYER_RE = re.compile(r"^(.+)/layer_(\d+)$")
MAX_BLOCKS = 100_000  # more runs of one key than this in a frame: it is not grouped, sort it
REPORT_TEST, REPORT_BOOT = "wilcoxon", 10_000  # build_report's defaults: the same numbers
STATUS_ORDER = (*F.STATUSES, *(s for s in ("interrupted",) if s not in F.STATUSES))
SUMMARY_FIELDS = (F.FINAL_EVAL_LOSS, F.BEST_EVAL_LOSS, F.FINAL_TRAIN_LOSS, F.LOSS_AT_INIT, F.MAX_GRAD_NORM,
                  F.MAX_ATTN_LOGIT, F.FINAL_LOG_Z, F.SPIKE_SCORE_LOSS, F.SPIKE_SCORE_GRAD_NORM, F.N_SPIKES)
# what a run page and a spike view draw, when the run has them
HEADLINE = (M.TRAIN_LOSS, M.EVAL_LOSS, M.GRAD_NORM, M.LOGITS_LOG_Z_MEAN)


def registry_order() -> list[str]:
    """Every metric key of `stability.metric_names.REGISTRY`, in declaration order."""
    return list(dict.fromkeys(m.key for m in M.REGISTRY))


def describe(key: str) -> str:
    """What a metric (or per-layer prefix) is, from its declaration; "" for an undeclared key."""
    found = M.REGISTRY.declared(key) or M.REGISTRY.declared(M.layer_key(key, 0))
    if found is None:
        return ""
    return f"{found.what} ({found.source})" if found.source else found.what


def jsonable(v: Any, keep_inf: bool = False) -> Any:
    """A frame value as JSON data: NA / NaN as None, numpy scalars as Python ones; +-inf as None,
    or as the strings "inf" / "-inf" with `keep_inf` (a diverged run's max grad norm is inf)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        if math.isinf(v) and keep_inf:
            return "inf" if v > 0 else "-inf"
        return float(v) if math.isfinite(v) else None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


class SeriesIndex:
    """Sorted (steps, values) per (run id, metric key), float64 both."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_frames(cls, series: pd.DataFrame, dense: pd.DataFrame) -> SeriesIndex:
        index = cls()
        if len(series):
            for (rid, key), x, y in _grouped([series[F.RUN_ID], series["metric"]], series["step"],
                                             series["value"]):
                index.data[(str(rid), str(key))] = (x, y)
        if len(dense):
            per_layer = dense["layer"].to_numpy() >= 0
            d = dense if per_layer.all() else dense[per_layer]  # no copy of millions of rows for nothing
            if len(d):
                for (rid, key, layer), x, y in _grouped([d[F.RUN_ID], d["key"], d["layer"]], d["step"],
                                                        d["value"], max_of_duplicates=True):
                    # MLflow's own per-layer key wins over the dense one
                    index.data.setdefault((str(rid), M.layer_key(str(key), int(layer))), (x, y))
        return index

    def get(self, run_id: str, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.data.get((run_id, metric))

    def keys_of(self, run_id: str) -> list[str]:
        return [m for r, m in self.data if r == run_id]

    def metrics(self) -> set[str]:
        return {m for _, m in self.data}

    def x_max(self) -> dict[str, float]:
        """The last step of each run over all its series."""
        out: dict[str, float] = {}
        for (rid, _), (x, _) in self.data.items():
            if x.size:
                out[rid] = max(out.get(rid, -math.inf), float(x[-1]))
        return out


def _changes(col: pd.Series) -> np.ndarray:
    """Where a column's value differs from the previous row's (n - 1 booleans); Arrow-backed
    strings are compared by Arrow, without a Python object per row."""
    if getattr(col.dtype, "storage", None) == "pyarrow" or isinstance(col.dtype, pd.ArrowDtype):
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = pa.chunked_array(pa.array(col.array))
        return pc.not_equal(arr[1:], arr[:-1]).to_numpy(zero_copy_only=False)
    values = col.to_numpy()
    return values[1:] != values[:-1]


def _grouped(keys: list[pd.Series], step_col: pd.Series, value_col: pd.Series,
             max_of_duplicates: bool = False):
    """(key tuple, steps, values) per distinct key tuple, steps sorted, as float64 arrays.

    The loader's frames are already grouped by run and key and sorted by step, so blocks are cut
    where a key column changes; a frame that is not (hand-made, shuffled) is sorted first.
    Duplicate steps of one key tuple keep the max (the dense rows of several heads).
    """
    step = step_col.to_numpy(dtype=np.float64, na_value=np.nan)
    value = value_col.to_numpy(dtype=np.float64, na_value=np.nan)
    change = np.zeros(max(step.size - 1, 0), dtype=bool)
    for col in keys:
        change |= _changes(col)
    starts = np.flatnonzero(np.r_[True, change])
    interleaved = starts.size > MAX_BLOCKS  # e.g. dense rows, written step by step
    firsts = [] if interleaved else list(zip(*[col.iloc[starts].tolist() for col in keys]))
    if interleaved or len(set(firsts)) < len(firsts) or ((np.diff(step) < 0) & ~change).any():
        group = np.zeros(step.size, dtype=np.int64)
        for col in keys:
            codes, uniques = pd.factorize(col)
            group = group * max(len(uniques), 1) + codes
        # not grouped and sorted: sort on codes (stable: rows logged in step order stay so)
        order = np.argsort(group, kind="stable")
        g, st = group[order], step[order]
        if ((np.diff(st) < 0) & (g[1:] == g[:-1])).any():
            order = np.lexsort((step, group))
            g, st = group[order], step[order]
        step, value = st, value[order]
        change = g[1:] != g[:-1]
        starts = np.flatnonzero(np.r_[True, change])
        firsts = list(zip(*[col.iloc[order[starts]].tolist() for col in keys]))
    if max_of_duplicates:
        same = np.r_[False, (np.diff(step) == 0) & ~change]
        if same.any():
            first = np.flatnonzero(~same)
            value = np.fmax.reduceat(value, first)
            step = step[first]
            starts = np.searchsorted(first, starts)
    ends = np.r_[starts[1:], step.size]
    for k, s, e in zip(firsts, starts.tolist(), ends.tolist()):
        yield k, step[s:e], value[s:e]


def split_series(series: str) -> tuple[str, str]:
    """'grad/norm@olmo2' -> ('grad/norm', 'olmo2'); a name without a rule -> (name, '')."""
    metric, _, rule = str(series).rpartition("@")
    return (metric, rule) if metric else (str(series), "")


def _any_true(values: pd.Series) -> bool | None:
    known = [bool(v) for v in values if v is not None and not pd.isna(v)]
    return any(known) if known else None


Precursors = dict[tuple[str, int], list[dict[str, Any]]]  # (run, step) -> what came before it


def event_precursors(lead: LL.LeadLag) -> Precursors:
    """{(run, step): precursors} of every analysed loss spike: the signals that left their range
    before it (lead > 0), earliest first, each {signal, name, layer (None: the whole-model series
    led), lead, sigma, cadence}; [] when none did."""
    out: Precursors = {}
    analysed = lead.spikes[lead.spikes["status"] == LL.ANALYSED]
    for rid, step in zip(analysed[F.RUN_ID], analysed["step"]):
        out[(str(rid), int(step))] = []
    rows = lead.signals[lead.signals["lead"] > 0] if len(lead.signals) else lead.signals
    rows = rows.sort_values([F.RUN_ID, "spike", "lead", "sigma"], ascending=[True, True, False, False],
                            kind="stable")
    for r in rows.to_dict("records"):
        out.setdefault((str(r[F.RUN_ID]), int(r["spike"])), []).append({
            "signal": r["signal"], "name": LL.name_of(r["signal"]), "layer": jsonable(r["layer"]),
            "lead": jsonable(r["lead"]), "sigma": jsonable(r["sigma"], keep_inf=True),
            "cadence": jsonable(r["cadence"])})
    return out


def leadlag_table(lead: LL.LeadLag, arms: list[str]) -> dict[str, Any] | None:
    """The report's lead-lag summary for the spikes page: per arm its sentence and, per signal it
    logged, spikes judged, the shares preceded / first / at the spike step, the median lead, the
    leading layer and the cadence (`leadlag.summarize`); None without an analysed loss spike."""
    if not (lead.spikes["status"] == LL.ANALYSED).any():
        return None
    summary = LL.summarize(lead, by=F.ARM)
    by_arm = dict(tuple(summary.groupby(F.ARM, sort=False)))
    rows = [{"arm": str(r[F.ARM]), "signal": str(r["name"]), "judged": int(r["n"]),
             **{k: jsonable(r[k]) for k in ("preceded", "first", "same_step", "median_lead",
                                             "leading_layer", "layer_share", "cadence")}}
            for _, r in summary[summary["logged"].astype(bool)].iterrows()]
    return {"horizon": lead.horizon, "z": lead.z, "rows": rows,
            "sentences": {a: LL.group_sentence(by_arm[a]) for a in arms if a in by_arm}}


def merge_events(spikes: pd.DataFrame, run_order: Iterable[str] = (),
                 precursors: Precursors | None = None) -> list[dict[str, Any]]:
    """One event per (run, step), in run order then step, each listing the rules that fired,
    whether training rewound from it (`rewound`: the spikes.csv action "rewind") and, from
    `precursors` ({(run, step): list}, `event_precursors`), what came before it (None: not an
    analysed loss spike)."""
    if spikes is None or not len(spikes):
        return []
    order = {rid: i for i, rid in enumerate(run_order)}
    sp = spikes.assign(_run=spikes[F.RUN_ID].astype(str),
                       _abs=pd.to_numeric(spikes["sigma"], errors="coerce").abs())
    sp["_o"] = sp["_run"].map(order).fillna(len(order))
    sp = sp.sort_values(["_o", "step", "_abs"], ascending=[True, True, False], kind="stable")
    events = []
    for (rid, step), g in sp.groupby(["_run", "step"], sort=False):
        rules = []
        for r in g.itertuples(index=False):
            metric, rule = split_series(r.series)
            rules.append({"rule": rule, "metric": metric, "sigma": jsonable(r.sigma),
                          "value": jsonable(r.value), "mean": jsonable(r.mean), "std": jsonable(r.std)})
        led = g[g["leading_layer"].notna()]
        lead = led.iloc[0] if len(led) else g.iloc[0]
        sig = g["_abs"].max()
        events.append({
            "run": rid, "step": int(step), "rules": rules,
            "sigma": jsonable(sig), "leading_layer": jsonable(lead["leading_layer"]),
            "leading_sigma": jsonable(lead["leading_sigma"]),
            "attn_logit_rising": _any_true(g["attn_logit_rising"]),
            "log_z_rising": _any_true(g["log_z_rising"]),
            "precursors": (precursors or {}).get((rid, int(step))),
            "rewound": bool(F.rewound(g).any()),
        })
    return events


def catalogue(metrics: Iterable[str]) -> list[dict[str, Any]]:
    """Metrics offered on the page: a key, or a per-layer prefix with its layers (and whether the
    prefix itself is also a series, e.g. grad/norm) and what it is, in registry order, unknown
    keys after."""
    plain: set[str] = set()
    layers: dict[str, set[int]] = {}
    for m in metrics:
        hit = LAYER_RE.match(m)
        if hit:
            layers.setdefault(hit.group(1), set()).add(int(hit.group(2)))
        else:
            plain.add(m)
    rank = {k: i for i, k in enumerate(registry_order())}
    names = sorted(plain | set(layers), key=lambda k: (rank.get(k, len(rank)), k))
    return [{"key": k, "total": k in plain, "layers": sorted(layers.get(k, ())), "what": describe(k)}
            for k in names]


def status_text(run: pd.Series) -> str:
    """finished | diverged @ step | failed | running @ step | interrupted @ step."""
    status = str(run[F.STATUS])
    at = run[F.DIVERGED_AT_STEP] if status == "diverged" else run[F.LAST_STEP]
    if status in ("diverged", "running", "interrupted") and not pd.isna(at):
        return f"{status} @ {int(at)}"
    return status


def _label(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else str(v)


def groups_of(runs: pd.DataFrame, arms: list[str]) -> list[dict[str, Any]]:
    """An arm at one learning rate (the arm alone when there is one LR): its runs make a band."""
    lrs = runs[F.LR].dropna().unique()
    several = len(lrs) > 1
    out: dict[tuple[str, Any], dict[str, Any]] = {}
    arm_rank = {a: i for i, a in enumerate(arms)}
    for _, r in runs.iterrows():
        arm = _label(jsonable(r[F.ARM]))
        lr = jsonable(r[F.LR]) if several else None
        key = (arm, lr)
        if key not in out:
            label = arm if lr is None else f"{arm} @ lr {lr:g}"
            out[key] = {"id": f"g{len(out)}", "arm": arm, "lr": lr, "label": label, "runs": []}
        out[key]["runs"].append(str(r[F.RUN_ID]))
    return sorted(out.values(), key=lambda g: (arm_rank.get(g["arm"], len(arm_rank)),
                                               math.inf if g["lr"] is None else g["lr"]))


def compare_table(grid: F.GridData) -> dict[str, Any] | None:
    """The report's paired differences against the baseline, or None without a baseline."""
    if not grid.baseline or grid.baseline not in set(grid.runs[F.ARM].dropna()) or len(grid.arms) < 2:
        return None
    from reports.stats import compare_arms, too_few_pairs

    frame = compare_arms(grid.runs, grid.baseline, test=REPORT_TEST, n_boot=REPORT_BOOT)
    few = too_few_pairs(frame)
    cols = ("arm", "metric", "lr", "direction", "n_pairs", "base_mean", "arm_mean", "mean_diff",
            "median_diff", "ci_low", "ci_high", "p_value", "p_holm", "n_better", "n_ties", "n_worse",
            "n_diverged_arm", "n_diverged_base", "note")
    rows = [{c: jsonable(r[c], keep_inf=True) for c in cols} for _, r in frame.iterrows()]
    return {"test": REPORT_TEST, "n_boot": REPORT_BOOT, "rows": rows, "too_few": bool(few.any()),
            "metrics": list(dict.fromkeys(frame["metric"]))}


@dataclass
class DashData:
    """One load of a grid as the dashboard serves it."""

    overview: dict[str, Any]
    index: SeriesIndex
    groups: dict[str, list[str]] = field(default_factory=dict)  # group id -> run ids

    @classmethod
    def from_grid(cls, grid: F.GridData, *, window: int = 20, poll_s: float | None = None) -> DashData:
        index = SeriesIndex.from_frames(grid.series, grid.dense)
        runs = grid.runs.drop_duplicates(F.RUN_ID, keep="last")
        ids = [str(r) for r in runs[F.RUN_ID]]
        lead = LL.grid_leadlag(grid)
        events = merge_events(grid.spikes, ids, event_precursors(lead))
        n_events: dict[str, int] = {}
        for e in events:
            n_events[e["run"]] = n_events.get(e["run"], 0) + 1
        x_max = index.x_max()
        params = grid.params if len(grid.params) else pd.DataFrame()
        arms = [str(a) for a in grid.arms]
        run_rows = []
        for _, r in runs.iterrows():
            rid = str(r[F.RUN_ID])
            p = params.loc[rid] if rid in params.index else None
            if isinstance(p, pd.DataFrame):
                p = p.iloc[-1]
            run_rows.append({
                "id": rid, "name": _label(jsonable(r[F.RUN_NAME])), "arm": _label(jsonable(r[F.ARM])),
                "seed": jsonable(r[F.SEED]), "lr": jsonable(r[F.LR]), "cell": jsonable(r[F.CELL]),
                "recipe": jsonable(r[F.RECIPE]), "status": _label(jsonable(r[F.STATUS])),
                "status_text": status_text(r), "last_step": jsonable(r[F.LAST_STEP]),
                "diverged_at": jsonable(r[F.DIVERGED_AT_STEP]),
                "x_max": jsonable(x_max.get(rid)), "n_events": n_events.get(rid, 0),
                "summary": {c: jsonable(r[c], keep_inf=True) for c in SUMMARY_FIELDS},
                "metrics": sorted(index.keys_of(rid)),
                "params": {} if p is None else {str(k): jsonable(v) for k, v in p.items()
                                                if jsonable(v) is not None},
            })
        groups = groups_of(runs, arms)
        statuses = [r["status"] for r in run_rows]
        is_grid = grid.parent_run_id is not None
        overview = {
            "name": str(grid.name), "baseline": grid.baseline, "is_grid": is_grid,
            "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "live": "running" in statuses, "poll_s": poll_s, "window": int(window),
            "statuses": {s: statuses.count(s) for s in
                         [*STATUS_ORDER, *sorted(set(statuses) - set(STATUS_ORDER))] if s in statuses},
            "arms": arms, "lrs": sorted({r["lr"] for r in run_rows if r["lr"] is not None}),
            "runs": run_rows, "groups": groups, "events": events,
            "metrics": catalogue(index.metrics()), "headline": list(HEADLINE),
            "rules": sorted({ru["rule"] for e in events for ru in e["rules"]}),
            "x_max": max((v for v in x_max.values()), default=0.0),
            "default_mode": "groups" if is_grid and any(len(g["runs"]) > 1 for g in groups) else "runs",
            "compare": compare_table(grid),
            "leadlag": leadlag_table(lead, arms),
        }
        return cls(overview, index, {g["id"]: g["runs"] for g in groups})
