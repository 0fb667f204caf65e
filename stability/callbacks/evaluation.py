"""Held-out loss every `train.eval_every` steps and at the end (`eval/loss`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stability import metric_names as M
from stability.callbacks.base import Callback, ReadOutEvent

if TYPE_CHECKING:
    from stability.trainer import Trainer


class EvalCallback(Callback):
    """Evaluates at the clean read-outs on the `eval_every` grid and at the last step (every rank:
    the sums are all-reduced); logged at the step before, as the training loss it follows."""

    def on_read_out(self, trainer: Trainer, event: ReadOutEvent) -> None:
        cfg = trainer.cfg.train
        step = trainer.step
        due = step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)
        if event.clean and due:
            trainer.eval_loss = trainer.evaluate()
            trainer.log_metrics(step - 1, {M.EVAL_LOSS: trainer.eval_loss})
