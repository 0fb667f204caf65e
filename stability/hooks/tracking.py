"""MLflow for a hooked run: the same `Tracker` (writer thread, outage spool) and run tags as our
trainer's, so `stability report` and `stability dashboard` pair hooked runs by arm and seed.

A hook either opens its own run or attaches to one its host already opened (the HF Trainer's
MLflow integration): one run either way, never two.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from stability import store
from stability.callbacks.tracking import TrackingCallback
from stability.store import Tag
from stability.tracking import Tracker

if TYPE_CHECKING:
    from stability.hooks.monitor import StabilityMonitor
    from stability.trainer import RunResult

HOOK_TAG = "stability.hook"  # which hook wrote the run: plain, hf, lightning


class HookTracking(TrackingCallback):
    """Opens (or attaches to) the run at start, ends it with its status; what the monitor
    produces is written as the trainer's tracking callback writes it. `attach_run_id` / `uri`:
    a run the host opened, in the host's store."""

    def __init__(self, attach_run_id: str | None = None, uri: str | None = None) -> None:
        super().__init__()
        self.attach_run_id = attach_run_id
        self.uri = uri

    def on_train_start(self, trainer: StabilityMonitor) -> None:  # type: ignore[override]
        o = trainer.options
        self.tracker = Tracker(self.uri or o.tracking_uri, o.experiment, trainer.run_name,
                               run_id=self.attach_run_id, spool_dir=trainer.ckpt_dir / "mlflow_spool",
                               tags={Tag.STATUS: store.RUNNING})
        trainer.run_id = self.tracker.run_id
        params = trainer.params()
        self.tracker.log_params({f"stability.{k}": v for k, v in params.items()})
        self.tracker.set_tags(self.tags(trainer, params))

    @staticmethod
    def tags(trainer: StabilityMonitor, params: dict[str, Any]) -> dict[str, Any]:
        """The trainer's run tags that a foreign loop has: arm, seed, lr, cell, status, ..."""
        o = trainer.options
        cell = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
        return {
            Tag.STATUS: store.RUNNING, Tag.ARM: o.arm or None, Tag.SEED: o.seed, Tag.LR: trainer.lr(),
            Tag.CELL: cell[:12], Tag.RECIPE: "custom", Tag.PRESET: "custom",
            Tag.N_PARAMS: sum(p.numel() for p in trainer.probes.params),
            Tag.DEVICE: str(trainer.probes.params[0].device), Tag.RANKS: 1,
            HOOK_TAG: trainer.hook,
        }

    def on_train_end(self, trainer: Any, result: RunResult) -> None:
        tags = {Tag.DIVERGED_AT_STEP: result.diverged_at_step} if result.diverged_at_step is not None else {}
        if result.status == store.INTERRUPTED:
            tags[Tag.INTERRUPTED_AT_STEP] = result.steps
        if self.tracker is not None:
            self.tracker.finish(result.status, tags)
            self.tracker = None
