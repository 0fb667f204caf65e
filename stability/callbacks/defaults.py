"""The callbacks every run gets, in the order they are called (the end events in reverse)."""

from __future__ import annotations

from stability.callbacks.base import Callback
from stability.callbacks.dense import DenseCallback
from stability.callbacks.evaluation import EvalCallback
from stability.callbacks.growth import GrowthCallback
from stability.callbacks.progress import ProgressBarCallback
from stability.callbacks.spikes import SpikesCsvCallback
from stability.callbacks.tracking import TrackingCallback
from stability.config import RunConfig


def default_callbacks(cfg: RunConfig, rank0: bool, progress: bool) -> list[Callback]:
    """Tracking first (it must exist before anything logs, and flushes last); eval on every
    rank (its sums are collective); the rest on rank 0 and only when there is something to do."""
    tracked = cfg.tracking.enabled and rank0
    probed = cfg.probes.enabled and rank0
    out: list[Callback] = []
    if tracked:
        out.append(TrackingCallback())
    if tracked and cfg.probes.enabled:
        out.append(GrowthCallback())
    out.append(EvalCallback())
    if probed:
        out.extend([DenseCallback(), SpikesCsvCallback()])
    if progress and rank0:
        out.append(ProgressBarCallback())
    return out
