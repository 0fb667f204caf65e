"""`spikes.csv`: the spike events so far, rewritten at checkpoints and at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stability import metric_names as M
from stability.callbacks.base import Callback

if TYPE_CHECKING:
    from stability.trainer import RunResult, Trainer


class SpikesCsvCallback(Callback):
    """Hands the monitor's events to the trainer as `spikes.csv` whenever there are new ones
    (and once at the end, so a run without spikes has an empty table, not none)."""

    def __init__(self) -> None:
        self.written: int | None = None  # events in the last table handed on

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        self._write(trainer)

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        monitor = trainer.probes.monitor
        if monitor is None or self.written == monitor.count:
            return
        self.written = monitor.count
        trainer.log_text(monitor.frame().to_csv(index=False), M.SPIKES_ARTIFACT)
