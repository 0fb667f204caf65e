"""MLflow for one run: opens (or resumes) it at train start, writes what the run produces, and
ends it with its status. The only callback that talks to the store (through `Tracker`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import model as model_lib
from stability import store
from stability.callbacks.base import Callback, ReadOutEvent
from stability.config import flatten, to_toml
from stability.recipes import recipe_deviations, run_recipe_of
from stability.store import Tag, absolute_uri, resolve_uri
from stability.tracking import Tracker, git_commit, resumable_run_id

if TYPE_CHECKING:
    from stability.trainer import RunResult, Trainer


class TrackingCallback(Callback):
    """One MLflow run per training run (rank 0 only); params, tags and `config.toml` once."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        t = trainer.cfg.tracking
        parent = {Tag.PARENT_RUN_ID: t.parent_run_id} if t.parent_run_id else {}
        write_uri = t.via or t.uri  # a grid's loopback server, else the store itself
        run_id = trainer.run_id or t.run_id or None
        if run_id is None and trainer.resume:  # no checkpoint: the run of this name, never a second
            run_id = resumable_run_id(write_uri, t.experiment, trainer.run_name, trainer.cell)
        self.tracker = Tracker(write_uri, t.experiment, trainer.run_name, run_id=run_id,
                               spool_dir=trainer.ckpt_dir / "mlflow_spool",
                               tags={**parent, Tag.CELL: trainer.cell, Tag.STATUS: store.RUNNING})
        trainer.run_id = self.tracker.run_id
        if self.tracker.resumed and trainer.step > 0:
            self.tracker.set_tags({Tag.STATUS: store.RUNNING, Tag.RESUMED_AT_STEP: trainer.step})
            return
        self.tracker.log_params(self._params(trainer))
        self.tracker.set_tags({**self._tags(trainer), **parent})
        self.tracker.log_text(to_toml(trainer.cfg), "config.toml")

    @staticmethod
    def _params(trainer: Trainer) -> dict[str, object]:
        params = flatten(trainer.cfg.to_dict())
        params["tracking.uri"] = absolute_uri(resolve_uri(trainer.cfg.tracking.uri))  # the user's store
        del params["tracking.via"]  # how this process reached it: gone after the run
        return params

    @staticmethod
    def _tags(trainer: Trainer) -> dict[str, object]:
        cfg = trainer.cfg
        base, deviations = recipe_deviations(cfg)
        return {
            Tag.RECIPE: run_recipe_of(cfg), Tag.BASE_RECIPE: base,
            Tag.DEVIATIONS: ",".join(f"{k}={v}" for k, v in sorted(deviations.items())),
            Tag.PRESET: cfg.preset or "custom", Tag.SEED: cfg.train.seed, Tag.LR: cfg.optim.lr,
            Tag.CELL: trainer.cell, Tag.STATUS: store.RUNNING, Tag.GIT_COMMIT: git_commit(),
            Tag.ARM: cfg.tracking.arm or None, Tag.DEVICE: str(trainer.device),
            Tag.RANKS: trainer.world.world_size, Tag.DATA_FINGERPRINT: trainer.data.fingerprint,
            Tag.ATTENTION: model_lib.resolve_attention_backend(cfg.model.attention, trainer.device.type),
            Tag.N_PARAMS: trainer.model.num_params(),
        }

    def on_read_out(self, trainer: Trainer, event: ReadOutEvent) -> None:
        assert self.tracker is not None
        for step, named in event.rows + event.probes:
            self.tracker.log_metrics(step, named)
        if event.clean:
            self.tracker.log_metrics(event.step, event.summary)

    def on_metrics(self, trainer: Trainer, step: int, values: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(step, values)

    def on_text(self, trainer: Trainer, text: str, artifact_file: str) -> None:
        if self.tracker is not None:
            self.tracker.log_text(text, artifact_file)

    def on_dense_parts(self, trainer: Trainer, directory: Path) -> None:
        if self.tracker is not None:
            self.tracker.log_dense_parts(directory)

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        """Every point up to the checkpoint is in the store (or the spool) before it is written:
        a resume from it then never leaves a hole, whatever kills the process after."""
        if self.tracker is not None:
            self.tracker.flush()

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        tags: dict[str, object] = {}
        if result.diverged_at_step is not None:
            tags = {Tag.DIVERGED_AT_STEP: result.diverged_at_step}
        if result.stop_signal:
            tags = {Tag.INTERRUPTED_AT_STEP: result.steps, Tag.STOP_SIGNAL: result.stop_signal}
        rewinder = getattr(trainer, "rewinder", None)  # a hook's monitor has none
        if rewinder is not None:
            tags[Tag.REWINDS] = len(rewinder.rewinds)
        self._finish(result.status, tags)

    def on_error(self, trainer: Trainer, status: str) -> None:
        self._finish(status, {Tag.INTERRUPTED_AT_STEP: trainer.step} if status == store.INTERRUPTED
                     else {})

    def _finish(self, status: str, tags: dict[str, object]) -> None:
        if self.tracker is not None:
            self.tracker.finish(status, tags)
