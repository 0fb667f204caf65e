"""The tidy frames every report, table, figure and dashboard works on (the loader's contract).

`reports.load` builds a `GridData` from what the tracker wrote to MLflow; statistics, figures and
dashboards take a `GridData` (or one of its frames) and nothing else, so they work on a store
copied from another machine and on frames built by hand in tests.

Frames (column order as in the constants below):

- `runs`: one row per run. Identity and tags (`RUN_ID`, `RUN_NAME`, `ARM`, `SEED` (Int64), `LR`
  (float), `CELL`, `RECIPE`, `STATUS` (running | finished | diverged | failed), `DIVERGED_AT_STEP`
  (Int64, NA unless diverged), `LAST_STEP` (Int64: the last step with a `train/loss` point)), then
  the per-run summaries in `SUMMARY_COLUMNS` (float64, NaN when the run has no such data).
  A diverged or failed run keeps its row: tables show it, they never drop it. `DIRECTIONS` says
  for each summary (and `DIVERGED_AT_STEP`) whether lower or higher is better, or neither.
- `params`: one row per run, indexed by run id, one column per flattened config key
  (`model.d_model`, `optim.lr`, ...), values as MLflow stored them parsed back to int / float /
  bool / str where they parse.
- `series`: long step series, columns `SERIES_COLUMNS` = (run_id, step, metric, value); metric
  names are `stability.metric_names` keys.
- `dense`: the per-layer / per-head artifact rows, columns `DENSE_COLUMNS` = (run_id, step, key,
  layer, head, value); head -1 means "not per head", layer -1 "not per layer".
- `spikes`: one row per spike event, `run_id` then `stability.spikes.EVENT_COLUMNS` (step,
  series as "train/loss@olmo2" or "grad/norm@olmo_core", value, sigma, mean, std, leading_layer,
  leading_sigma, attn_logit_rising, log_z_rising).

`GridData.name` is the grid (experiment) name, `baseline` the baseline arm (the parent run's
`baseline` tag; None for a plain experiment), `parent_run_id` the grid's parent run if any.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stability import store
from stability.spikes import EVENT_COLUMNS, REWOUND

# runs: identity and tags
RUN_ID = "run_id"
RUN_NAME = "run_name"
ARM = "arm"
SEED = "seed"
LR = "lr"
CELL = "cell"
RECIPE = "recipe"
STATUS = "status"
DIVERGED_AT_STEP = "diverged_at_step"
LAST_STEP = "last_step"
IDENTITY_COLUMNS = (RUN_ID, RUN_NAME, ARM, SEED, LR, CELL, RECIPE, STATUS, DIVERGED_AT_STEP, LAST_STEP)

# runs: per-run summaries (float64)
FINAL_EVAL_LOSS = "final_eval_loss"  # last eval/loss point
BEST_EVAL_LOSS = "best_eval_loss"  # min eval/loss
FINAL_TRAIN_LOSS = "final_train_loss"  # last train/loss
LOSS_AT_INIT = "loss_at_init"  # first train/loss (the loss of the untrained model)
MAX_GRAD_NORM = "max_grad_norm"  # max grad/norm
MAX_ATTN_LOGIT = "max_attn_logit"  # max over steps and layers of attn/logit_max (dense, else MLflow)
FINAL_LOG_Z = "final_log_z"  # last logits/log_z_mean
SPIKE_SCORE_LOSS = "spike_score_loss"  # last spike/score_loss (OLMo 2 definition, percent)
SPIKE_SCORE_GRAD_NORM = "spike_score_grad_norm"  # last spike/score_grad_norm
N_SPIKES = "n_spikes"  # rows in spikes.csv
GROWTH_ACT = "growth_act"  # init/growth_act
GROWTH_GRAD = "growth_grad"  # init/growth_grad
D_MODEL = "d_model"  # model.d_model (for growth-vs-width figures)
INIT = "init"  # model.init, as a string column (not float): see OBJECT_SUMMARIES
SUMMARY_COLUMNS = (FINAL_EVAL_LOSS, BEST_EVAL_LOSS, FINAL_TRAIN_LOSS, LOSS_AT_INIT, MAX_GRAD_NORM,
                   MAX_ATTN_LOGIT, FINAL_LOG_Z, SPIKE_SCORE_LOSS, SPIKE_SCORE_GRAD_NORM, N_SPIKES,
                   GROWTH_ACT, GROWTH_GRAD, D_MODEL, INIT)
OBJECT_SUMMARIES = (INIT,)

# Which way is better, per summary: statistics count a seed as better (or tied) only for metrics
# with a direction. None: a diagnostic whose size is not a goal in itself. A lower max grad norm
# or attention logit is what pre-norm or QK-norm do, not a better run; log Z and the growth
# exponents describe the mechanism (z-loss, init) the recipes act on.
LOWER, HIGHER = "lower", "higher"
DIRECTIONS: dict[str, str | None] = {
    FINAL_EVAL_LOSS: LOWER, BEST_EVAL_LOSS: LOWER, FINAL_TRAIN_LOSS: LOWER, LOSS_AT_INIT: None,
    MAX_GRAD_NORM: None, MAX_ATTN_LOGIT: None, FINAL_LOG_Z: None,
    SPIKE_SCORE_LOSS: LOWER, SPIKE_SCORE_GRAD_NORM: LOWER, N_SPIKES: LOWER,  # OLMo 2's stability measure
    GROWTH_ACT: None, GROWTH_GRAD: None, D_MODEL: None, INIT: None,
    DIVERGED_AT_STEP: HIGHER,  # later (or never) is better
}
RUN_COLUMNS = IDENTITY_COLUMNS + SUMMARY_COLUMNS

SERIES_COLUMNS = (RUN_ID, "step", "metric", "value")
DENSE_COLUMNS = (RUN_ID, "step", "key", "layer", "head", "value")
SPIKE_COLUMNS = (RUN_ID, *EVENT_COLUMNS)

STATUSES = store.STATUSES  # running | finished | diverged | failed | interrupted


def empty_runs() -> pd.DataFrame:
    return _typed(pd.DataFrame(columns=list(RUN_COLUMNS)))


def _typed(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with the contract's dtypes."""
    out = runs.copy()
    for col in (SEED, DIVERGED_AT_STEP, LAST_STEP):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    out[LR] = pd.to_numeric(out[LR], errors="coerce").astype("float64")
    for col in SUMMARY_COLUMNS:
        if col in OBJECT_SUMMARIES:
            out[col] = out[col].astype("object")
        else:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    for col in (RUN_ID, RUN_NAME, ARM, CELL, RECIPE, STATUS):
        out[col] = out[col].astype("object")
    return out


def typed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Add missing contract columns (NA) and coerce dtypes; extra columns are kept at the end."""
    out = runs.copy()
    for col in RUN_COLUMNS:
        if col not in out.columns:
            out[col] = pd.NA
    extra = [c for c in out.columns if c not in RUN_COLUMNS]
    return _typed(out[list(RUN_COLUMNS) + extra]).reset_index(drop=True)


@dataclass
class GridData:
    """Everything a report needs about one grid or experiment, as tidy frames."""

    name: str
    runs: pd.DataFrame
    series: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SERIES_COLUMNS)))
    dense: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(DENSE_COLUMNS)))
    spikes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SPIKE_COLUMNS)))
    params: pd.DataFrame = field(default_factory=pd.DataFrame)
    baseline: str | None = None
    parent_run_id: str | None = None

    @property
    def arms(self) -> list[str]:
        """Arms in a stable order: the baseline first, then first appearance in `runs`."""
        seen = [a for a in dict.fromkeys(self.runs[ARM].dropna().tolist())]
        if self.baseline in seen:
            seen.remove(self.baseline)
            seen.insert(0, self.baseline)
        return seen

    def metric(self, name: str) -> pd.DataFrame:
        """The long series of one metric: (run_id, step, value), sorted by run then step."""
        s = self.series[self.series["metric"] == name]
        return s[[RUN_ID, "step", "value"]].sort_values([RUN_ID, "step"]).reset_index(drop=True)

    def run_spikes(self, run_id: str) -> pd.DataFrame:
        return self.spikes[self.spikes[RUN_ID] == run_id].reset_index(drop=True)


def layer_frame(grid: GridData, key: str, run_ids: Iterable[str] | None = None, *,
                heads: str = "max") -> pd.DataFrame:
    """(run_id, step, layer, value) of a per-layer key: the dense artifact (per-head rows reduced
    by `heads` = "max", or only head -1 rows with "none"), else the `key/layer_i` series; non-finite
    values as NaN. `run_ids`: those runs (None: all)."""
    ids = set(grid.runs[RUN_ID] if run_ids is None else run_ids)
    d = grid.dense
    d = d[(d["key"] == key) & (d["layer"] >= 0) & d[RUN_ID].isin(ids)] if len(d) else d.iloc[0:0]
    if heads == "none":
        d = d[d["head"] == -1]
    d = d.assign(value=pd.to_numeric(d["value"], errors="coerce"))
    d = d.groupby([RUN_ID, "step", "layer"], as_index=False)["value"].max()
    rest = ids - set(d[RUN_ID])
    s = grid.series
    prefix = key + "/layer_"
    s = s[s[RUN_ID].isin(rest) & s["metric"].astype(str).str.startswith(prefix)]
    if len(s):
        layer = pd.to_numeric(s["metric"].str[len(prefix):], errors="coerce")
        s = s.assign(layer=layer, value=pd.to_numeric(s["value"], errors="coerce")).dropna(subset=["layer"])
        s = s.assign(layer=s["layer"].astype(int))[[RUN_ID, "step", "layer", "value"]]
        d = pd.concat([d, s], ignore_index=True) if len(d) else s
    out = d.reset_index(drop=True)
    out.loc[~np.isfinite(out["value"].astype(float)), "value"] = np.nan
    return out


def rewound(spikes: pd.DataFrame) -> pd.Series:
    """Per spike event row: whether training rewound from it (action `REWOUND`; NaN where a CSV
    cell was empty, and no column at all in files older than rewinds, both read as not)."""
    if "action" not in spikes:
        return pd.Series(False, index=spikes.index)
    return spikes["action"].astype(str) == REWOUND
