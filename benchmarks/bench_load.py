"""Loading a grid back from MLflow: `reports.load.load_grid` on a synthetic 64-run store.

The store is written the way the trainer writes one (`MlflowClient.log_batch`, <= 1000 points a
request) into a temporary sqlite store: a grid parent run (tags `stability.role=grid`,
`baseline`, `grid`) and `--runs` children (`mlflow.parentRunId`, `arm`, `seed`, `lr`, `cell`,
`recipe`, `status`), each with the trainer's metric cadence at `--steps` steps and `--layers`
layers (defaults: 6 layers, 107 series):

- every step: the 11 step series (train/loss, ..., grad/norm/embed, grad/norm/lm_head);
- every 10 steps (`log_every`, `probes.every`): 9 read-out series (tokens, lr, spike scores) and
  9 per-layer probe keys per layer plus 3 more (param/norm/embed, logits/max_abs, logits/mean);
- every 50 steps (`probes.attn_every`): 5 attention keys per layer;
- eval/loss every 500 steps, init/growth_* once;

plus a dense Parquet part per run (per-layer grad norms every 10 steps, attention logits per head
every 50) and a `spikes.csv`. Writing the store is not timed (it takes a few minutes; `--store DIR`
keeps it for the next invocation). Timed: `load_grid` (all series, dense on), median of
`--repeats`.

    python benchmarks/bench_load.py                       # 64 runs x 5000 steps
    python benchmarks/bench_load.py --runs 8 --steps 1000 # a quick look
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stability import metric_names as M  # noqa: E402
from stability.dense import DenseWriter  # noqa: E402
from stability.spikes import SpikeEvent, events_to_frame  # noqa: E402
from stability.store import artifact_root_for, quiet_mlflow_logs  # noqa: E402

GRID = "bench-grid"
STEP_KEYS = (*M.STEP_SERIES, M.LOGITS_LOG_Z_MEAN, M.LOGITS_LOG_Z_MAX, M.GRAD_NORM_EMBED,
             M.GRAD_NORM_LM_HEAD)
READOUT_KEYS = (M.TRAIN_TOKENS_PER_S, M.TRAIN_TOKENS, M.TRAIN_LR, M.TRAIN_MASKED_TOKENS,
                M.SPIKE_SCORE_LOSS, M.SPIKE_SCORE_GRAD_NORM, M.SPIKE_ONLINE_LOSS,
                M.SPIKE_ONLINE_GRAD_NORM, M.SPIKE_COUNT)
PROBE_LAYER_KEYS = (M.GRAD_NORM, M.GRAD_RMS, M.GRAD_NORM_ATTN, M.GRAD_NORM_MLP, M.GRAD_NORM_NORMS,
                    M.PARAM_NORM, M.UPDATE_RMS, M.OPTIM_EPS_REGIME, M.ACT_RMS)
PROBE_KEYS = (M.PARAM_NORM_EMBED, M.LOGITS_MAX_ABS, M.LOGITS_MEAN)
ATTN_KEYS = (M.ATTN_LOGIT_MAX, M.ATTN_ENTROPY_MEAN, M.ATTN_ENTROPY_MIN, M.ATTN_Q_NORM, M.ATTN_K_NORM)


def run_points(steps: int, layers: int, rng: np.random.Generator) -> list[tuple[str, int, float]]:
    """(key, step, value) of one synthetic run, with the trainer's cadence."""
    pts: list[tuple[str, int, float]] = []
    s = np.arange(steps)
    for key in STEP_KEYS:
        vals = 3.0 + 5.0 * np.exp(-s / 500.0) + 0.05 * rng.standard_normal(steps)
        pts.extend(zip([key] * steps, s.tolist(), vals.tolist()))
    every10 = s[9::10].tolist()
    probe_keys = [*READOUT_KEYS, *PROBE_KEYS,
                  *(M.layer_key(k, i) for k in PROBE_LAYER_KEYS for i in range(layers))]
    for key in probe_keys:
        pts.extend(zip([key] * len(every10), every10, rng.random(len(every10)).tolist()))
    every50 = s[::50].tolist()
    for key in (M.layer_key(k, i) for k in ATTN_KEYS for i in range(layers)):
        pts.extend(zip([key] * len(every50), every50, (10 * rng.random(len(every50))).tolist()))
    ev = s[499::500].tolist() or [steps - 1]
    pts.extend((M.EVAL_LOSS, st, 3.5 + rng.random()) for st in ev)
    pts.extend([(M.INIT_GROWTH_ACT, 0, 0.1), (M.INIT_GROWTH_GRAD, 0, -0.1)])
    return pts


def build_store(root: Path, n_runs: int, steps: int, layers: int, heads: int = 4) -> tuple[str, int]:
    """Write the synthetic grid under `root`; return (tracking URI, metric points written)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient


    quiet_mlflow_logs()

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(GRID, artifact_location=artifact_root_for(uri))
    arms = ["olmo2", "no_qk_norm", "pre_norm", "no_z_loss", "olmo0424", "eps_1e-5", "emb_wd", "init"]
    parent = client.create_run(exp, run_name=GRID, tags={"stability.role": "grid", "baseline": "olmo2",
                                                         "grid": GRID}).info.run_id
    total = 0
    t0 = time.perf_counter()
    for i in range(n_runs):
        arm, seed = arms[i % len(arms)], i // len(arms)
        rng = np.random.default_rng(i)
        tags = {"mlflow.parentRunId": parent, "arm": arm, "seed": str(seed), "lr": "0.03",
                "cell": f"{i:012x}", "recipe": "olmo2", "status": "finished"}
        rid = client.create_run(exp, run_name=f"{GRID}/{arm}/s{seed}", tags=tags).info.run_id
        params = [Param(k, v) for k, v in {"model.d_model": "128", "model.init": "normal",
                                           "model.n_layers": str(layers), "optim.lr": "0.03",
                                           "train.seed": str(seed), "train.steps": str(steps)}.items()]
        client.log_batch(rid, params=params, tags=[RunTag("git_commit", "0" * 40)])
        ts = int(time.time() * 1000)
        pts = run_points(steps, layers, rng)
        for j in range(0, len(pts), 1000):
            client.log_batch(rid, metrics=[Metric(k, v, ts + st, st) for k, st, v in pts[j:j + 1000]])
        total += len(pts)
        with tempfile.TemporaryDirectory() as tmp:
            with DenseWriter(Path(tmp) / "dense") as w:
                for st in range(9, steps, 10):
                    w.add(st, M.GRAD_NORM, rng.random(layers))
                for st in range(0, steps, 50):
                    w.add(st, M.ATTN_LOGIT_MAX, 10 * rng.random((layers, heads)))
            client.log_artifacts(rid, str(Path(tmp) / "dense"), "dense")
        events = [SpikeEvent(step=int(st), series="grad/norm@olmo2", value=9.0, sigma=8.0, mean=1.0,
                             std=1.0, leading_layer=1, leading_sigma=9.0, attn_logit_rising=True,
                             log_z_rising=False) for st in rng.choice(steps, size=i % 3, replace=False)]
        client.log_text(rid, events_to_frame(events).to_csv(index=False), M.SPIKES_ARTIFACT)
        client.set_terminated(rid, "FINISHED")
        if i % 8 == 7:
            print(f"  wrote {i + 1}/{n_runs} runs, {total:,} points, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
    client.set_terminated(parent, "FINISHED")
    return uri, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", default="", help="keep the synthetic store in DIR (reused if there)")
    args = ap.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    tmp = None
    if args.store:
        root = Path(args.store).resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
    uri = f"sqlite:///{root}/mlflow.db"
    if not (root / "mlflow.db").exists():
        t0 = time.perf_counter()
        uri, _ = build_store(root, args.runs, args.steps, args.layers)
        print(f"store written in {time.perf_counter() - t0:.0f} s (not timed)", file=sys.stderr)
    from reports.load import load_grid

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        grid = load_grid(GRID, uri)
        times.append(time.perf_counter() - t0)
    print(f"{'runs':>5s} {'series':>7s} {'points':>11s} {'dense rows':>11s} {'seconds':>8s}  (median of "
          f"{args.repeats}: {', '.join(f'{t:.2f}' for t in times)})")
    n_series = grid.series.groupby("run_id")["metric"].nunique().median() if len(grid.series) else 0
    print(f"{len(grid.runs):5d} {n_series:7.0f} {len(grid.series):11,d} {len(grid.dense):11,d} "
          f"{statistics.median(times):8.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
