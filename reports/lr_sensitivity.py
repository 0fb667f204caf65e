"""Learning-rate sensitivity (Wortsman et al. 2023; docs/reference.md section 5) on the `runs` frame.

Per arm and seed: the mean over the swept LRs of `min(loss(lr), loss_at_init) - min_lr loss(lr)`,
a diverged (or NaN-loss) run counting as its loss at initialisation; lower is better.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports import frames as F
from reports.stats import RESULT_STATUSES, arm_order, baseline_of, bootstrap_ci, runs_frame


def effective_losses(runs: pd.DataFrame | F.GridData, metric: str = F.FINAL_EVAL_LOSS) -> pd.DataFrame:
    """Per (arm, seed, lr) result run: the loss the LR sensitivity uses, `min(loss, loss_at_init)`.

    A diverged run, or one whose loss is NaN, counts as `loss_at_init`; a run without
    `loss_at_init` takes the median `loss_at_init` of all runs. failed / running runs are left out.
    Columns: arm, seed, lr, status, loss (as logged), loss_at_init, effective_loss.
    """
    r = runs_frame(runs)
    r = r[r[F.STATUS].isin(RESULT_STATUSES) & r[F.LR].notna()]
    init = r[F.LOSS_AT_INIT].fillna(r[F.LOSS_AT_INIT].median())
    loss = r[metric].where(r[F.STATUS] != "diverged")
    out = pd.DataFrame({"arm": r[F.ARM], "seed": r[F.SEED], "lr": r[F.LR], "status": r[F.STATUS],
                        "loss": r[metric], "loss_at_init": init,
                        "effective_loss": np.fmin(loss.to_numpy(dtype=float), init.to_numpy(dtype=float))})
    return out.sort_values(["arm", "seed", "lr"]).reset_index(drop=True)


def lr_sensitivity_per_seed(runs: pd.DataFrame | F.GridData, metric: str = F.FINAL_EVAL_LOSS) -> pd.DataFrame:
    """Per (arm, seed): n_lrs and sensitivity = mean over its LRs of effective_loss - min effective_loss.

    NaN sensitivity with fewer than 2 LRs (the definition needs a sweep).
    """
    return _per_seed(effective_losses(runs, metric))


def _per_seed(eff: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (arm, seed), g in eff.groupby(["arm", "seed"], sort=False):
        v = g["effective_loss"].to_numpy(dtype=float)
        sens = float(np.mean(v - np.min(v))) if v.size >= 2 and np.all(np.isfinite(v)) else np.nan
        rows.append({"arm": arm, "seed": seed, "n_lrs": int(v.size), "sensitivity": sens})
    return pd.DataFrame(rows, columns=["arm", "seed", "n_lrs", "sensitivity"])


def lr_sensitivity(runs: pd.DataFrame | F.GridData, metric: str = F.FINAL_EVAL_LOSS, *, n_boot: int = 10_000,
                   ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """LR sensitivity per arm (Wortsman et al. 2023; docs/reference.md section 5). Lower is better.

    Per seed: mean over the swept LRs of `min(loss(lr), loss_at_init) - min_lr loss(lr)`, a
    diverged or NaN-loss run counting as `loss_at_init` (`effective_losses`); then averaged over
    the seeds that have every swept LR (a seed missing one, failed / running / absent, is left out
    and named in the note: a shorter sweep would bias it). Columns: arm, n_lrs (LRs swept by the
    arm), n_seeds, sensitivity (mean over seeds), sensitivity_sd (sd across seeds, ddof 1),
    ci_low / ci_high (bootstrap over seeds), optimal_lr (the LR with the lowest seed-mean effective
    loss), best_loss (that mean), n_diverged, note.
    """
    frame = runs_frame(runs)
    eff = effective_losses(frame, metric)
    per_seed = _per_seed(eff)
    rows = []
    for arm in arm_order(frame, baseline_of(runs)):
        e, s = eff[eff["arm"] == arm], per_seed[per_seed["arm"] == arm]
        all_runs = frame[frame[F.ARM] == arm]
        swept = np.sort(e["lr"].unique())
        notes = []
        short = s["n_lrs"] < swept.size
        if short.any():
            seeds = ", ".join(f"s{x}" for x in s.loc[short, "seed"])
            notes.append(f"{seeds} left out: missing LRs (failed/running/absent)")
        if swept.size < 2:
            notes.append("fewer than 2 LRs: no sensitivity")
        s = s[~short]
        values = s["sensitivity"].dropna().to_numpy(dtype=float)
        curve = e.groupby("lr")["effective_loss"].mean()
        low, high = bootstrap_ci(values, n_boot=n_boot, ci=ci, seed=seed)
        rows.append({
            "arm": arm, "n_lrs": int(swept.size), "n_seeds": int(values.size),
            "sensitivity": float(values.mean()) if values.size else np.nan,
            "sensitivity_sd": float(values.std(ddof=1)) if values.size >= 2 else np.nan,
            "ci_low": low, "ci_high": high,
            "optimal_lr": float(curve.idxmin()) if curve.notna().any() else np.nan,
            "best_loss": float(curve.min()) if curve.notna().any() else np.nan,
            "n_diverged": int((all_runs[F.STATUS] == "diverged").sum()),
            "note": "; ".join(notes),
        })
    return pd.DataFrame(rows, columns=["arm", "n_lrs", "n_seeds", "sensitivity", "sensitivity_sd", "ci_low",
                                       "ci_high", "optimal_lr", "best_loss", "n_diverged", "note"])
