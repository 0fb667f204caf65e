"""The callbacks every run gets, in the order they are called (the end events in reverse)."""

from __future__ import annotations

from stability.callbacks.base import Callback
from stability.callbacks.dense import DenseCallback
from stability.callbacks.evaluation import EvalCallback
from stability.callbacks.growth import GrowthCallback
from stability.callbacks.held import HeldBack
from stability.callbacks.progress import ProgressBarCallback
from stability.callbacks.rewinds import RewindsCsvCallback
from stability.callbacks.spikes import SpikesCsvCallback
from stability.callbacks.tracking import TrackingCallback
from stability.config import RunConfig


def default_callbacks(cfg: RunConfig, rank0: bool, progress: bool) -> list[Callback]:
    """Tracking first (it must exist before anything logs, and flushes last); eval on every
    rank (its sums are collective); the rest on rank 0 and only when there is something to do.
    With rewinds on, the recorders (tracking, dense) are held back until a step is final."""
    tracked = cfg.tracking.enabled and rank0
    probed = cfg.probes.enabled and rank0
    rewinding = cfg.train.on_spike == "rewind"
    recorders: list[Callback] = []
    if tracked:
        recorders.append(TrackingCallback())
    out: list[Callback] = []
    if tracked and cfg.probes.enabled:
        out.append(GrowthCallback())
    out.append(EvalCallback())
    if probed:
        dense: list[Callback] = [DenseCallback()]
        if rewinding:
            recorders.extend(dense)
        else:
            out.extend(dense)
        out.append(SpikesCsvCallback())
        if rewinding:
            out.append(RewindsCsvCallback())
    if progress and rank0:
        out.append(ProgressBarCallback())
    if not recorders:
        return out
    return [HeldBack(recorders) if rewinding else recorders[0], *out]
