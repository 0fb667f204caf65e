"""The callback interface and the list that dispatches to it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stability.rewind import Rewind
    from stability.spikes import SpikeEvent
    from stability.trainer import RunResult, Trainer


@dataclass
class ReadOutEvent:
    """One read-out: every step's named values since the last, copied to the host in one transfer.

    `rows`: per-step headline values; `probes`: probe and attention steps' values; `dense`: the
    per-layer / per-head series for the columnar artifact, (step, key, values); `summary`: the
    per-read-out series (tokens/s, tokens, lr, masked tokens, spike scores) at `step`, logged only
    on a regular read-out without divergence; `last`: the last row's values plus the summary (for
    displays); `regular`: on the `log_every` grid (False: a stop between read-outs);
    `first_bad`: the first step with a non-finite loss or grad norm, or None; `events`: the spike
    events found in these steps.
    """

    step: int
    rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    probes: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    dense: list[tuple[int, str, list]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    regular: bool = True
    first_bad: int | None = None
    events: list[SpikeEvent] = field(default_factory=list)  # spike events it found

    @property
    def clean(self) -> bool:
        """A regular read-out without divergence: the summary is logged, evals may follow."""
        return self.regular and self.first_bad is None


class Callback:
    """Override the points a concern needs; every method is a no-op by default."""

    def on_setup(self, trainer: Trainer) -> None:
        """The model is built and initialised, not yet sharded or compiled."""

    def on_train_start(self, trainer: Trainer) -> None:
        """A checkpoint (if any) is restored; the first step is next."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """Optimizer step `step` is done (host side: its values are still on the device)."""

    def on_read_out(self, trainer: Trainer, event: ReadOutEvent) -> None:
        """The steps since the last read-out reached the host."""

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        """A checkpoint of `step` is about to be written: flush what it should see."""

    def on_rewind(self, trainer: Trainer, rewind: Rewind) -> None:
        """Training went back to `rewind.to_step` (`train.on_spike = "rewind"`): the steps from
        there on will run again."""

    def on_train_end(self, trainer: Trainer, result: RunResult) -> None:
        """The run ended with a result: finished, diverged or interrupted."""

    def on_error(self, trainer: Trainer, status: str) -> None:
        """The run ended by an exception: `failed`, or `interrupted` by a second Ctrl-C."""

    def on_metrics(self, trainer: Trainer, step: int, values: dict[str, float]) -> None:
        """Metrics some part of the run produced at `step`."""

    def on_text(self, trainer: Trainer, text: str, artifact_file: str) -> None:
        """A text artifact some part of the run produced (rewritten as it grows)."""

    def on_dense_parts(self, trainer: Trainer, directory: Path) -> None:
        """New immutable Parquet parts appeared in `directory`."""


# Flushing events go in reverse order: the first callback to start (tracking, the sink) is the
# last to flush, after the others flushed into it.
REVERSED_EVENTS = ("on_checkpoint", "on_train_end", "on_error")


class Callbacks:
    """Calls every callback in order; `REVERSED_EVENTS` in reverse order."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.items = list(callbacks)

    def append(self, callback: Callback) -> None:
        """Add a callback after the trainer was built (one that needs the trainer itself)."""
        self.items.append(callback)

    def call(self, event: str, *args: Any) -> None:
        """`event` (a `Callback` method name) on every callback."""
        for cb in reversed(self.items) if event in REVERSED_EVENTS else self.items:
            getattr(cb, event)(*args)

    def find(self, kind: type) -> Any | None:
        """The first callback of type `kind`, if any (also inside a wrapper's `inner` list)."""
        for cb in self.items:
            if isinstance(cb, kind):
                return cb
            inner = getattr(cb, "inner", None)
            found = inner.find(kind) if isinstance(inner, Callbacks) else None
            if found is not None:
                return found
        return None


class OnReadOut(Callback):
    """Calls `fn(step, last)` after each read-out without divergence (`last`: the last step's
    values and the read-out's series): a one-line hook for scripts and tests."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]) -> None:
        self.fn = fn

    def on_read_out(self, trainer: Trainer, event: ReadOutEvent) -> None:
        if event.first_bad is None:
            self.fn(trainer.step, event.last)
