"""Rewind and skip (`train.on_spike = "rewind"`): on a loss spike, go back to a snapshot taken at
least `rewind.before` steps earlier, skip `rewind.skip_batches` batches of data and go on.

PaLM (Chowdhery et al. 2022, section 5.1) restarted ~100 steps before a spike and skipped 200-500
batches; metaseq users asked for the same. The data order here is a pure function of the batch
index, so "skip these batches" is exact: after a rewind, step `t` trains on batch `t + offset`.

- Snapshots are in memory (on the CPU), taken at read-out boundaries every `rewind.every` steps;
  the ring keeps enough of them to reach `before` steps behind any spike a read-out can find.
- A rewind restores everything a checkpoint holds (weights, optimizer moments, skip-step and
  spike-detector state, counters), then moves the data offset on by `skip_batches`.
- A checkpoint commits: the ring starts again from it, so a rewind never crosses a checkpoint and
  a resumed run rewinds exactly as the uninterrupted one (`--resume` is bitwise on CPU).
- The logged series stay one value per step: recorders hear of a step only once no snapshot can
  take it back (`stability.callbacks.held.HeldBack`); the abandoned stretch is not logged as
  metrics, each rewind is a row of `rewinds.csv` and its spike a `rewind` row of `spikes.csv`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from stability import metric_names as M
from stability.config import RewindConfig
from stability.spikes import SpikeEvent

REWINDS_ARTIFACT = "rewinds.csv"
DIVERGED = "diverged"  # the reason of a rewind on a non-finite loss or grad norm


@dataclass
class Rewind:
    """One rewind: what set it off, where training went back to and what data it skipped."""

    rewind: int  # 1, 2, ...
    spike_step: int  # the loss spike's step (or the first non-finite one)
    reason: str  # the spike's series@rule, or "diverged"
    value: float  # the CE loss there (nan when non-finite)
    detected_at: int  # the last step of the read-out that found it
    to_step: int  # training went on from this step
    skipped_batches: int
    data_offset: int  # batch index - step, from `to_step` on


REWIND_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Rewind))


def rewinds_frame(rewinds: list[Rewind]) -> pd.DataFrame:
    """The `rewinds.csv` table, one row per rewind (`REWIND_COLUMNS`)."""
    return pd.DataFrame([dataclasses.asdict(r) for r in rewinds], columns=list(REWIND_COLUMNS))


def is_loss_spike(event: SpikeEvent) -> bool:
    """A spike of the CE loss under any rule (`train/ce_loss@olmo2`, `@online`, `@olmo_core`)."""
    return event.series.split("@", 1)[0] == M.TRAIN_CE_LOSS and not event.action


def to_cpu(state: Any) -> Any:
    """A deep copy of `state` with every tensor cloned to the CPU (a snapshot the training step
    cannot change)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return copy.deepcopy(state)


@dataclass
class Snapshot:
    step: int  # the state before this step
    state: dict[str, Any]


class SnapshotRing:
    """The newest snapshots, oldest first; `keep` of them."""

    def __init__(self, keep: int) -> None:
        self.items: deque[Snapshot] = deque(maxlen=keep)

    def push(self, step: int, state: dict[str, Any]) -> None:
        if self.items and self.items[-1].step == step:
            self.items.pop()
        self.items.append(Snapshot(step, to_cpu(state)))

    def reset(self, step: int, state: dict[str, Any]) -> None:
        self.items.clear()
        self.push(step, state)

    @property
    def oldest_step(self) -> int:
        return self.items[0].step

    def target(self, spike_step: int, before: int) -> Snapshot:
        """The newest snapshot at least `before` steps before `spike_step`, else the oldest."""
        wanted = spike_step - before
        fit = [s for s in self.items if s.step <= wanted]
        return fit[-1] if fit else self.items[0]

    def drop_after(self, step: int) -> None:
        while self.items and self.items[-1].step > step:
            self.items.pop()


class Rewinder:
    """Decides whether a read-out rewinds, and keeps the snapshots and the record of rewinds."""

    def __init__(self, cfg: RewindConfig, log_every: int) -> None:
        self.cfg = cfg
        self.every = cfg.every or log_every
        # a spike found at read-out R lies at most log_every - 1 steps before it: reach `before`
        # steps behind that, plus the boundary at or below it
        self.ring = SnapshotRing(math.ceil((cfg.before + log_every) / self.every) + 1)
        self.rewinds: list[Rewind] = []

    @property
    def left(self) -> int:
        return self.cfg.max_rewinds - len(self.rewinds)

    def due(self, step: int) -> bool:
        """Whether the state before `step` (a read-out boundary) is snapshotted."""
        return step % self.every == 0

    def trigger(self, events: list[SpikeEvent], first_bad: int | None, loss_at: dict[int, float]
                ) -> tuple[int, str, float, list[SpikeEvent]] | None:
        """(step, reason, loss, the loss-spike events) of what a read-out found that rewinds:
        its first non-finite step or its first loss spike; None when there is none or no
        rewinds are left."""
        if self.left <= 0:
            return None
        spikes = [e for e in events if is_loss_spike(e)]
        if first_bad is not None and not any(e.step < first_bad for e in spikes):
            return first_bad, DIVERGED, math.nan, []
        if not spikes:
            return None
        first = min(e.step for e in spikes)
        at = [e for e in spikes if e.step == first]
        return first, at[0].series, loss_at.get(first, at[0].value), at

    def record(self, spike_step: int, reason: str, value: float, detected_at: int, to_step: int,
               data_offset: int) -> Rewind:
        r = Rewind(len(self.rewinds) + 1, spike_step, reason, value, detected_at, to_step,
                   self.cfg.skip_batches, data_offset)
        self.rewinds.append(r)
        return r

    def state_dict(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.rewinds]

    def load_state_dict(self, rows: list[dict[str, Any]]) -> None:
        self.rewinds = [Rewind(**r) for r in rows]
