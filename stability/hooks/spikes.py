"""The trainer's spike monitor fed from a foreign loop: the host's loss stands in for the CE
loss (for HF causal LMs it is the cross-entropy), and log Z, which a hook cannot see, is left
unknown in the events (`log_z_rising` empty) instead of being reported as not rising."""

from __future__ import annotations

from stability import metric_names as M
from stability.spike_monitor import SpikeMonitor
from stability.spikes import SpikeEvent


class HostSpikeMonitor(SpikeMonitor):
    """`SpikeMonitor` on the values a hook has: the loss, the grad norm, per-layer norms."""

    def update(self, step: int, values: dict[str, float], layer_norms: list[float]) -> list[SpikeEvent]:
        fed = {**values, M.TRAIN_CE_LOSS: values[M.TRAIN_LOSS], M.LOGITS_LOG_Z_MEAN: float("nan")}
        events = super().update(step, fed, layer_norms)
        for event in events:
            event.log_z_rising = None
        return events
