"""A small real MLflow store for dashboard tests, written the way the tracker writes one.

`Store(root, template)` is a sqlite store (artifacts beside it), started from a copy of
`template_db()` (an empty, migrated database: creating the schema takes seconds);
`grid_parent` makes a grid parent run, `add_run` a run with tags, a few series (`log_batch`, one
point per step), a spikes.csv and a status, so `reports.load.load_grid` reads it back like a
trainer's run. `log_points` appends steps to a run that is still running.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from stability import metric_names as M
from stability.spikes import SpikeEvent, events_to_frame


def template_db(folder: Path) -> Path:
    """An empty MLflow sqlite database with its schema, to copy for each store."""
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


class Store:
    def __init__(self, root: Path, template: Path, experiment: str = "dash-exp") -> None:
        from mlflow.tracking import MlflowClient

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, self.root / "mlflow.db")
        self.uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiment = experiment
        self.exp_id = self.client.create_experiment(experiment,
                                                    artifact_location=(self.root / "mlartifacts").as_uri())

    def grid_parent(self, baseline: str) -> str:
        return self.client.create_run(self.exp_id, run_name=self.experiment,
                                      tags={"stability.role": "grid", "baseline": baseline,
                                            "grid": self.experiment}).info.run_id

    def add_run(self, name: str, *, arm: str | None = None, seed: int = 0, lr: float = 1e-3,
                steps: int = 50, parent: str | None = None, status: str | None = "finished",
                spikes: tuple[tuple[int, str], ...] = (), layers: int = 2) -> str:
        """A run with train/loss, grad/norm, eval/loss and per-layer grad norms for `steps` steps;
        `spikes`: (step, "metric@rule") rows of its spikes.csv; status None leaves it running."""
        tags = {"seed": str(seed), "lr": str(lr), "recipe": "olmo2"}
        if arm is not None:
            tags["arm"] = arm
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        if status is not None:
            tags["status"] = status
        rid = self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id
        self.client.log_batch(rid, params=[_param("optim.lr", str(lr)), _param("train.seed", str(seed))])
        self.log_points(rid, 0, steps, seed=seed, layers=layers)
        self.client.log_text(rid, f"[train]\nseed = {seed}\n", "config.toml")  # as the trainer does
        if spikes:
            events = [SpikeEvent(step=st, series=series, value=9.0, sigma=8.0 + i, mean=1.0, std=1.0,
                                 leading_layer=1, leading_sigma=9.0, attn_logit_rising=True,
                                 log_z_rising=False)
                      for i, (st, series) in enumerate(spikes)]
            self.client.log_text(rid, events_to_frame(events).to_csv(index=False), M.SPIKES_ARTIFACT)
        if status is not None:
            self.client.set_terminated(rid, "FINISHED" if status in ("finished", "diverged") else "FAILED")
        return rid

    def log_points(self, rid: str, start: int, stop: int, *, seed: int = 0, layers: int = 2) -> None:
        from mlflow.entities import Metric

        s = np.arange(start, stop)
        rng = np.random.default_rng(seed)
        loss = 3.0 + 5.0 * np.exp(-s / 30.0) + 0.01 * rng.standard_normal(s.size)
        gnorm = 1.0 + 0.05 * rng.standard_normal(s.size) + seed * 0.1
        points = [(M.TRAIN_LOSS, loss), (M.GRAD_NORM, gnorm)]
        points += [(M.layer_key(M.GRAD_NORM, i), gnorm / (i + 1)) for i in range(layers)]
        metrics = [Metric(k, float(v), 1_700_000_000_000 + int(st), int(st))
                   for k, vals in points for st, v in zip(s, vals)]
        metrics += [Metric(M.EVAL_LOSS, float(loss[i]) + 0.1, 1_700_000_000_000 + int(st), int(st))
                    for i, st in enumerate(s) if st % 10 == 9]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(rid, metrics=metrics[i:i + 1000])


def _param(k: str, v: str):
    from mlflow.entities import Param

    return Param(k, v)
