"""Hand-made `GridData` for report tests: known arms, seeds, series, spikes and a diverged run.

Everything is deterministic (numpy Generator seeded per run) so tests can assert on numbers.
The summaries in `runs` are computed from the series exactly as the loader defines them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports import frames as F
from stability import metric_names as M

# planted before each loss spike: {signal: steps it rises before the spike}, and in which layer
PRECURSORS = {M.GRAD_NORM: 5, M.UPDATE_RMS: 10}
PRECURSOR_LAYERS = {M.GRAD_NORM: 1, M.UPDATE_RMS: 0}


def _precursors(s: np.ndarray, loss: np.ndarray, spikes: list[dict], rid: str, steps: list[int],
                n_layers: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plant each loss spike (+1.5 nats, a spikes.csv row) and its precursors (`PRECURSORS`, each a
    plateau from its lead before the spike to 2 steps after); returns (grad-norm bump, update-RMS
    bump of its layer, update-RMS noise per layer (zeros without loss spikes))."""
    gbump, ubump = np.zeros(s.size), np.zeros(s.size)
    if not steps:
        return gbump, ubump, np.zeros((n_layers, s.size))
    for st in steps:
        i = np.searchsorted(s, st)
        if i < s.size and s[i] == st:
            loss[i] += 1.5
            spikes.append({F.RUN_ID: rid, "step": int(st), "series": f"{M.TRAIN_CE_LOSS}@olmo2",
                           "value": float(loss[i]), "sigma": 9.0, "mean": float(loss[i]) - 1.5, "std": 0.15,
                           "leading_layer": PRECURSOR_LAYERS[M.GRAD_NORM], "leading_sigma": 9.0,
                           "attn_logit_rising": False, "log_z_rising": False})
        for bump, key, size in ((gbump, M.GRAD_NORM, 2.0), (ubump, M.UPDATE_RMS, 0.3)):
            bump[(s >= st - PRECURSORS[key]) & (s <= st + 2)] += size
    return gbump, ubump, 0.01 * rng.standard_normal((n_layers, s.size))


def synthetic_grid(arms=("olmo2", "no_qk_norm", "olmo0424"), seeds=(0, 1, 2), lrs=(3e-3,),
                   steps: int = 200, n_layers: int = 4, n_heads: int = 2, log_every: int = 1,
                   eval_every: int = 50, arm_offset: dict[str, float] | None = None,
                   diverged: dict[tuple[str, int, float], int] | None = None,
                   spike_steps: dict[tuple[str, int, float], list[int]] | None = None,
                   loss_spike_steps: dict[tuple[str, int, float], list[int]] | None = None,
                   name: str = "synthetic", baseline: str | None = "olmo2") -> F.GridData:
    """A grid of arms x seeds x lrs.

    `arm_offset[arm]` shifts that arm's loss curve (positive: worse); `diverged[(arm, seed, lr)]`
    ends that run at the given step with status diverged; `spike_steps[(arm, seed, lr)]` puts a
    grad-norm spike (led by layer 1) and a smaller loss bump at those steps;
    `loss_spike_steps[(arm, seed, lr)]` puts a CE loss spike event (spikes.csv) at those steps,
    with planted precursors (`PRECURSORS`): the global and layer-1 grad norm rise 5 steps before
    it, layer 0's Adam update RMS 10 steps before (update RMS then carries a little noise).
    """
    arm_offset = arm_offset or {}
    diverged = diverged or {}
    spike_steps = spike_steps or {}
    loss_spike_steps = loss_spike_steps or {}
    runs, series, dense, spikes, params = [], [], [], [], []
    for ai, arm in enumerate(arms):
        for seed in seeds:
            for li, lr in enumerate(lrs):
                rid = f"r{ai}{seed}{li}_{arm}"
                rng = np.random.default_rng(1000 * ai + 10 * seed + li)
                last = diverged.get((arm, seed, lr), steps - 1)
                s = np.arange(0, last + 1, log_every)
                off = arm_offset.get(arm, 0.0)
                # a lr-dependent bowl: best near 1e-2
                lr_pen = 0.3 * (np.log10(lr) + 2.0) ** 2
                loss = 7.6 * np.exp(-s / 60.0) + 3.5 + off + lr_pen + 0.02 * rng.standard_normal(s.size)
                gnorm = 1.0 + 0.3 * np.exp(-s / 30.0) + 0.05 * rng.standard_normal(s.size)
                for st in spike_steps.get((arm, seed, lr), []):
                    i = np.searchsorted(s, st)
                    if i < s.size and s[i] == st:
                        gnorm[i] += 8.0
                        loss[i] += 0.5
                        spikes.append({F.RUN_ID: rid, "step": int(st), "series": "grad/norm@olmo2",
                                       "value": float(gnorm[i]), "sigma": 12.0, "mean": 1.0, "std": 0.6,
                                       "leading_layer": 1, "leading_sigma": 15.0,
                                       "attn_logit_rising": arm != "olmo2", "log_z_rising": False})
                gbump, ubump, unoise = _precursors(s, loss, spikes, rid,
                                                   loss_spike_steps.get((arm, seed, lr), []), n_layers,
                                                   np.random.default_rng(7777 + 1000 * ai + 10 * seed + li))
                gnorm = gnorm + gbump
                if (arm, seed, lr) in diverged:
                    loss[-1] = np.nan
                    gnorm[-1] = np.inf
                logit_growth = np.ones(s.size) if arm == "olmo2" else 1.0 + s / 20.0
                attn = np.outer(logit_growth, 5.0 + np.arange(n_layers)[::-1])  # layer 0 largest
                log_z = 0.1 + 0.001 * s * (2.0 if arm == "olmo0424" else 1.0)
                emb = 30.0 + 0.02 * s
                for metric, values in ((M.TRAIN_LOSS, loss), (M.GRAD_NORM, gnorm),
                                       (M.LOGITS_LOG_Z_MEAN, log_z), (M.PARAM_NORM_EMBED, emb),
                                       (M.TRAIN_LR, np.full(s.size, lr))):
                    series.append(pd.DataFrame({F.RUN_ID: rid, "step": s, "metric": metric, "value": values}))
                for layer in range(n_layers):
                    series.append(pd.DataFrame({F.RUN_ID: rid, "step": s,
                                                "metric": M.layer_key(M.ATTN_LOGIT_MAX, layer),
                                                "value": attn[:, layer]}))
                ev_steps = s[(s % eval_every == eval_every - 1) | (s == s[-1])]
                ev = 7.6 * np.exp(-ev_steps / 60.0) + 3.6 + off + lr_pen
                ev = ev + 0.01 * rng.standard_normal(ev_steps.size)
                if (arm, seed, lr) in diverged:
                    ev_steps, ev = ev_steps[:-1], ev[:-1]
                series.append(pd.DataFrame({F.RUN_ID: rid, "step": ev_steps, "metric": M.EVAL_LOSS,
                                            "value": ev}))
                growth_act = 0.2 if arm == "olmo2" else 0.05
                series.append(pd.DataFrame({F.RUN_ID: rid, "step": [0, 0],
                                            "metric": [M.INIT_GROWTH_ACT, M.INIT_GROWTH_GRAD],
                                            "value": [growth_act, -0.1]}))
                n_sp = len(spike_steps.get((arm, seed, lr), []))
                score_g = 100.0 * n_sp / s.size
                series.append(pd.DataFrame({F.RUN_ID: rid, "step": [s[-1], s[-1]],
                                            "metric": [M.SPIKE_SCORE_LOSS, M.SPIKE_SCORE_GRAD_NORM],
                                            "value": [score_g / 2, score_g]}))
                for layer in range(n_layers):
                    share = 1.0 + (2.0 if layer == 1 else 0.0)
                    g = (gnorm - gbump) * share / n_layers
                    g = g + (gbump if layer == PRECURSOR_LAYERS[M.GRAD_NORM] else 0.0)
                    rms = 0.5 + 0.1 * layer + unoise[layer]
                    rms = rms + (ubump if layer == PRECURSOR_LAYERS[M.UPDATE_RMS] else 0.0)
                    for key, vals in ((M.GRAD_NORM, g), (M.UPDATE_RMS, rms),
                                      (M.OPTIM_EPS_REGIME, np.full(s.size, 0.01 * layer)),
                                      (M.ACT_RMS, np.full(s.size, 1.0 + layer))):
                        dense.append(pd.DataFrame({F.RUN_ID: rid, "step": s, "key": key, "layer": layer,
                                                   "head": -1, "value": vals}))
                    for h in range(n_heads):
                        dense.append(pd.DataFrame({F.RUN_ID: rid, "step": s, "key": M.ATTN_LOGIT_MAX,
                                                   "layer": layer, "head": h,
                                                   "value": attn[:, layer] * (1.0 - 0.1 * h)}))
                status = "diverged" if (arm, seed, lr) in diverged else "finished"
                finite = loss[np.isfinite(loss)]
                runs.append({
                    F.RUN_ID: rid, F.RUN_NAME: f"{name}/{arm}/s{seed}/lr{lr:g}", F.ARM: arm, F.SEED: seed,
                    F.LR: lr, F.CELL: f"c{ai}{seed}{li}",
                    F.RECIPE: "olmo0424" if arm == "olmo0424" else "olmo2",
                    F.STATUS: status, F.DIVERGED_AT_STEP: last if status == "diverged" else pd.NA,
                    F.LAST_STEP: int(s[-1]),
                    F.FINAL_EVAL_LOSS: ev[-1] if ev.size else np.nan,
                    F.BEST_EVAL_LOSS: ev.min() if ev.size else np.nan,
                    F.FINAL_TRAIN_LOSS: loss[-1], F.LOSS_AT_INIT: finite[0],
                    F.MAX_GRAD_NORM: np.nanmax(gnorm), F.MAX_ATTN_LOGIT: attn.max(),
                    F.FINAL_LOG_Z: log_z[-1], F.SPIKE_SCORE_LOSS: score_g / 2,
                    F.SPIKE_SCORE_GRAD_NORM: score_g, F.N_SPIKES: n_sp, F.GROWTH_ACT: growth_act,
                    F.GROWTH_GRAD: -0.1, F.D_MODEL: 128,
                    F.INIT: "mitchell" if arm == "olmo0424" else "normal",
                })
                params.append({F.RUN_ID: rid, "model.d_model": 128, "optim.lr": lr, "train.seed": seed,
                               "model.qk_norm": "full" if arm == "olmo2" else "none"})
    spikes_frame = pd.DataFrame(spikes, columns=list(F.SPIKE_COLUMNS))
    return F.GridData(
        name=name, runs=F.typed_runs(pd.DataFrame(runs)),
        series=pd.concat(series, ignore_index=True)[list(F.SERIES_COLUMNS)],
        dense=pd.concat(dense, ignore_index=True)[list(F.DENSE_COLUMNS)],
        spikes=spikes_frame, params=pd.DataFrame(params).set_index(F.RUN_ID),
        baseline=baseline, parent_run_id="parent0" if baseline else None)
