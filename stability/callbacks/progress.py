"""The progress bar: steps, loss, grad norm, tokens/s, MFU where known, and the live spike count."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from stability import metric_names as M
from stability.callbacks.base import Callback, ReadOutEvent

if TYPE_CHECKING:
    from stability.rewind import Rewind
    from stability.trainer import RunResult, Trainer


class ProgressBarCallback(Callback):
    def __init__(self) -> None:
        self.bar: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.cfg.train.steps, initial=trainer.step, unit="step",
                        dynamic_ncols=True, file=sys.stderr)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.bar.update(1)

    def on_read_out(self, trainer: Trainer, event: ReadOutEvent) -> None:
        last = event.last
        if event.first_bad is not None or M.TRAIN_LOSS not in last:
            return
        self.bar.set_postfix(loss=f"{last[M.TRAIN_LOSS]:.3f}", gnorm=f"{last[M.GRAD_NORM]:.2f}",
                             tok_s=f"{last[M.TRAIN_TOKENS_PER_S]:.0f}",
                             **({"mfu": f"{last[M.TRAIN_MFU]:.1%}"} if M.TRAIN_MFU in last else {}),
                             spikes=int(last.get(M.SPIKE_COUNT, 0)),
                             **({"rewinds": int(last[M.TRAIN_REWINDS])} if M.TRAIN_REWINDS in last
                                else {}))

    def on_rewind(self, trainer: Trainer, rewind: Rewind) -> None:
        self.bar.n = trainer.step  # the steps from here run again
        self.bar.refresh()

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        self.close()

    def on_error(self, trainer: Trainer, status: str) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
