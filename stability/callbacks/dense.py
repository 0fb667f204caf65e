"""The dense per-layer and per-head series as Parquet parts in `<checkpoint dir>/dense/`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stability.callbacks.base import Callback, ReadOutEvent
from stability.dense import DenseWriter

if TYPE_CHECKING:
    from stability.trainer import RunResult, Trainer

FLUSH_READOUTS = 10  # a Parquet part every 10 read-outs (and at checkpoints and the end)


class DenseCallback(Callback):
    """Buffers each read-out's dense rows; writes a part every `FLUSH_READOUTS` read-outs, before
    every checkpoint and at the end, and hands each new part to the trainer (the tracker uploads)."""

    def __init__(self) -> None:
        self.writer: DenseWriter | None = None
        self.read_outs = 0

    def on_train_start(self, trainer: Trainer) -> None:
        self.dir = trainer.ckpt_dir / "dense"
        self.writer = DenseWriter(self.dir)

    def on_read_out(self, trainer: Trainer, event: ReadOutEvent) -> None:
        assert self.writer is not None
        layers = trainer.probes.layers
        for step, key, values in event.dense:
            arr = np.asarray(values, dtype=np.float32)
            self.writer.add(step, key, arr, layers=layers if arr.ndim == 2 else None)
        self.read_outs += 1
        if self.read_outs % FLUSH_READOUTS == 0:
            self._flush(trainer)

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        self._flush(trainer)

    def _flush(self, trainer: Trainer) -> None:
        if self.writer is not None and self.writer.flush() is not None:
            trainer.log_dense_parts(self.dir)
