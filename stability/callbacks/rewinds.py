"""`rewinds.csv`: one row per rewind (`train.on_spike = "rewind"`), rewritten as rewinds happen,
at checkpoints and at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stability.callbacks.base import Callback
from stability.rewind import REWINDS_ARTIFACT, Rewind, rewinds_frame

if TYPE_CHECKING:
    from stability.trainer import RunResult, Trainer


class RewindsCsvCallback(Callback):
    def __init__(self) -> None:
        self.written: int | None = None

    def on_rewind(self, trainer: Trainer, rewind: Rewind) -> None:
        self._write(trainer)

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        self._write(trainer)

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        if trainer.rewinder is None or self.written == len(trainer.rewinder.rewinds):
            return
        self.written = len(trainer.rewinder.rewinds)
        trainer.log_text(rewinds_frame(trainer.rewinder.rewinds).to_csv(index=False), REWINDS_ARTIFACT)
