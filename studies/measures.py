"""Per-run numbers a finding compares, each computed from a grid's runs and series alone.

A `Measure` turns a `GridData` into one value per (arm, seed, lr). Most are run summaries the
reports already compute (`reports.frames` columns); the rest are reductions of a logged series
chosen because at CPU scale they still show what the paper's measure shows at 7B: a 300-step run
rarely has a point 7 standard deviations out (the OLMo 2 spike score), but how far its largest
grad-norm excursion rises above the typical level still separates a spiky run from a calm one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports import frames as F
from reports.lr_sensitivity import lr_sensitivity_per_seed
from reports.stats import RESULT_STATUSES
from stability import metric_names as M

EXCURSION_WINDOW = 100  # previous steps whose median is the "typical" grad norm
LATE_SHARE = 0.5  # "late in training": the last half of the logged steps

VALUE_COLUMNS = ("arm", "seed", "lr", "value")


@dataclass(frozen=True)
class Measure:
    name: str  # a column of the findings table's csv
    label: str  # what a reader sees
    per_run: Callable[[F.GridData], pd.Series] | None = None  # run_id -> value
    per_seed: Callable[[F.GridData], pd.DataFrame] | None = None  # VALUE_COLUMNS, lr NaN

    def values(self, grid: F.GridData) -> pd.DataFrame:
        """(arm, seed, lr, value) of every finished or diverged run (per seed: of every arm and seed)."""
        if self.per_seed is not None:
            return self.per_seed(grid)
        runs = grid.runs[grid.runs[F.STATUS].isin(RESULT_STATUSES)]
        value = self.per_run(grid).reindex(runs[F.RUN_ID]).to_numpy(dtype=float)
        return pd.DataFrame({"arm": runs[F.ARM].to_numpy(), "seed": runs[F.SEED].to_numpy(),
                             "lr": runs[F.LR].to_numpy(dtype=float), "value": value})


def _column(column: str) -> Callable[[F.GridData], pd.Series]:
    return lambda grid: grid.runs.set_index(F.RUN_ID)[column].astype(float)


def _series(grid: F.GridData, key: str) -> dict[str, pd.Series]:
    s = grid.series[grid.series["metric"] == key]
    return {rid: g.set_index("step")["value"].astype(float).sort_index()
            for rid, g in s.groupby(F.RUN_ID, sort=False)}


def _late(s: pd.Series) -> pd.Series:
    return s[s.index >= s.index.min() + (1 - LATE_SHARE) * (s.index.max() - s.index.min())]


def excursion(s: pd.Series, window: int | None = None) -> float:
    """The largest value (a grad norm, a loss) relative to the median of the `window` steps before
    it (default `EXCURSION_WINDOW`, a third of the series when that is shorter); NaN while no point
    has a full window."""
    window = window or max(1, min(EXCURSION_WINDOW, len(s) // 3))
    typical = s.rolling(window, min_periods=window).median().shift(1)
    ratio = (s / typical).replace([np.inf, -np.inf], np.nan).dropna()
    return float(ratio.max()) if len(ratio) else float("nan")


def _per_series(key: str, reduce: Callable[[pd.Series], float]) -> Callable[[F.GridData], pd.Series]:
    return lambda grid: pd.Series({rid: reduce(s) for rid, s in _series(grid, key).items()},
                                  dtype=float)


def of_series(name: str, label: str, key: str, reduce: Callable[[pd.Series], float]) -> Measure:
    """A measure that reduces each run's logged series `key` (indexed by step) to one number."""
    return Measure(name, label, _per_series(key, reduce))


def _layer_late_mean(key: str) -> Callable[[F.GridData], pd.Series]:
    """Mean over layers and late steps of a per-layer key."""
    def per_run(grid: F.GridData) -> pd.Series:
        frame = F.layer_frame(grid, key, heads="none")
        steps = frame.groupby(F.RUN_ID)["step"].transform(
            lambda x: x >= x.min() + (1 - LATE_SHARE) * (x.max() - x.min()))
        return frame[steps.astype(bool)].groupby(F.RUN_ID)["value"].mean()
    return per_run


def _lr_sensitivity(grid: F.GridData) -> pd.DataFrame:
    per = lr_sensitivity_per_seed(grid.runs)
    return pd.DataFrame({"arm": per["arm"], "seed": per["seed"], "lr": np.nan,
                         "value": per["sensitivity"].astype(float)})


SPIKE_SCORE_GRAD = Measure("spike_score_grad_norm", "grad-norm spike score (%, OLMo 2: 7 sigma)",
                           _column(F.SPIKE_SCORE_GRAD_NORM))
GRAD_EXCURSION = Measure("grad_excursion", "largest grad norm / median of the 100 steps before",  # or n/3
                         _per_series(M.GRAD_NORM, excursion))
MAX_GRAD_NORM = Measure("max_grad_norm", "max grad norm", _column(F.MAX_GRAD_NORM))
GRAD_NORM_LATE = Measure("grad_norm_late", "mean grad norm, last half",
                         _per_series(M.GRAD_NORM, lambda s: float(_late(s).mean())))
MAX_ATTN_LOGIT = Measure("max_attn_logit", "max attention logit", _column(F.MAX_ATTN_LOGIT))
FINAL_EVAL_LOSS = Measure("final_eval_loss", "final eval loss", _column(F.FINAL_EVAL_LOSS))
EPS_REGIME = Measure("eps_regime", "share in the eps regime, last half",
                     _layer_late_mean(M.OPTIM_EPS_REGIME))
UPDATE_RMS = Measure("update_rms", "Adam update RMS, last half", _layer_late_mean(M.UPDATE_RMS))
EMBED_NORM = Measure("embedding_norm", "final embedding L2 norm",
                     _per_series(M.PARAM_NORM_EMBED, lambda s: float(s.iloc[-1])))
LOG_Z = Measure("final_log_z", "mean log Z, last 10% of steps",
                _per_series(M.LOGITS_LOG_Z_MEAN, lambda s: float(s.iloc[-max(1, len(s) // 10):].mean())))
LR_SENSITIVITY = Measure("lr_sensitivity", "LR sensitivity (Wortsman et al.)",
                         per_seed=_lr_sensitivity)
