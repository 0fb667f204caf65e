"""Recorders that hear of a step only once nothing can take it back (`train.on_spike = "rewind"`).

With rewinds on, the steps since the oldest snapshot may still be run again; a recorder that had
written them (MLflow, the dense artifact) would then hold two values for one step. `HeldBack`
wraps such recorders: read-outs and metrics queue up by step and reach them once the snapshot
ring has moved past their steps, at a checkpoint, or at the end; a rewind drops what it takes
back. Everything else (start, text artifacts, dense parts, checkpoints, the end) passes straight
through.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stability.callbacks.base import Callback, Callbacks, ReadOutEvent

if TYPE_CHECKING:
    from stability.rewind import Rewind
    from stability.trainer import RunResult, Trainer


def first_step(event: ReadOutEvent) -> int:
    """The first step a read-out covers (its rows start at a read-out boundary)."""
    return event.rows[0][0] if event.rows else event.step


class HeldBack(Callback):
    """`inner` callbacks, with `on_read_out` and `on_metrics` held until final."""

    def __init__(self, inner: list[Callback]) -> None:
        self.inner = Callbacks(inner)
        self.queue: list[tuple[int, str, tuple[Any, ...]]] = []  # (step, event, args)

    def release_before(self, step: int) -> None:
        """Deliver, in order, what was queued for steps before `step`."""
        due = [q for q in self.queue if q[0] < step]
        self.queue = [q for q in self.queue if q[0] >= step]
        for _, name, args in due:
            self.inner.call(name, *args)

    def release_all(self) -> None:
        self.release_before(2**62)

    # ---------------------------------------------------------------- held
    def on_read_out(self, trainer: Trainer, event: ReadOutEvent) -> None:
        self.queue.append((first_step(event), "on_read_out", (trainer, event)))
        if trainer.rewinder is not None:
            self.release_before(trainer.rewinder.ring.oldest_step)

    def on_metrics(self, trainer: Trainer, step: int, values: dict[str, float]) -> None:
        self.queue.append((step, "on_metrics", (trainer, step, values)))

    def on_rewind(self, trainer: Trainer, rewind: Rewind) -> None:
        self.queue = [q for q in self.queue if q[0] < rewind.to_step]
        self.inner.call("on_rewind", trainer, rewind)

    # ---------------------------------------------------------------- committing
    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        self.release_all()
        self.inner.call("on_checkpoint", trainer, step)

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        self.release_all()
        self.inner.call("on_train_end", trainer, result)

    def on_error(self, trainer: Trainer, status: str) -> None:
        self.release_all()
        self.inner.call("on_error", trainer, status)

    # ---------------------------------------------------------------- passed through
    def on_setup(self, trainer: Trainer) -> None:
        self.inner.call("on_setup", trainer)

    def on_train_start(self, trainer: Trainer) -> None:
        self.inner.call("on_train_start", trainer)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.inner.call("on_step_end", trainer, step)

    def on_text(self, trainer: Trainer, text: str, artifact_file: str) -> None:
        self.inner.call("on_text", trainer, text, artifact_file)

    def on_dense_parts(self, trainer: Trainer, directory: Path) -> None:
        self.inner.call("on_dense_parts", trainer, directory)
